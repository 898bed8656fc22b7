"""fed-sim on a tiny real-layout FLAIR file: RGB images, 17 coarse and a few dozen fine labels, both label sets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedge.adapters import AdapterState
from fedge.data.flair_hdf5 import FlairHDF5Dataset, write_tiny_flair_hdf5
from fedge.errors import ConfigError
from fedge.simulations.cli import main
from fedge.simulations.config import load_config

COARSE = [f"coarse_{i:02d}" for i in range(17)]
VOCABULARY = {f"fine_{i:02d}": COARSE[i % 17] for i in range(40)}  # 40 fine labels over FLAIR's 17 coarse


@pytest.fixture(scope="module")
def flair_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("flair") / "flair_federated.hdf5"
    users = {f"1{i:04d}@N00": ("train", 6 + i % 5) for i in range(12)}
    users.update({f"2{i:04d}@N00": ("val", 8) for i in range(2)})
    users.update({f"3{i:04d}@N00": ("test", 10) for i in range(3)})
    write_tiny_flair_hdf5(path, users=users, image_hw=20, vocabulary=VOCABULARY, seed=1)
    return path


def _args(path: Path, run_dir: Path, label_set: str) -> list[str]:
    sets = {"dataset.flair_path": path, "dataset.image_size": 16, "dataset.public_users": 4,
            "federation.pretrain_images": 200, "federation.pretrain_epochs": 1.0, "federation.cohort_size": 3,
            "federation.min_clients": 2, "federation.eval_users": 2, "federation.eval_every": 1,
            "simulation.test_users": 3, "simulation.eval_every": 1}
    return ["--config", "flair", "--run-dir", str(run_dir), "--label-set", label_set, "--rounds", "2",
            "--backend", "inprocess", "--no-progress", "--json"] + [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]


@pytest.mark.parametrize("label_set", ["coarse", "fine"])
def test_fed_sim_runs_real_flair_layout(flair_file: Path, tmp_path: Path, label_set: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    n_labels = len(FlairHDF5Dataset(flair_file).label_names[label_set])
    assert n_labels == (17 if label_set == "coarse" else 40)
    run_dir = tmp_path / label_set
    assert main(_args(flair_file, run_dir, label_set)) == 0, capsys.readouterr().err
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["dataset"] == "flair" and s["rounds_done"] == 2 and s["num_classes"] == n_labels
    assert s["data"]["public_users"] == 4 and s["population"] == 8 and s["data"]["image_shape"] == [3, 16, 16]
    assert all(math.isfinite(s["final_test"][k]) for k in ("macro_ap", "micro_ap"))
    assert set(s["baseline_test"]) == {"macro_ap", "micro_ap"}  # the backbone was pretrained on this label set
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in lines if r.get("round", 0) > 0 and not r.get("event")]
    assert [r["clients"] for r in rounds] and all(r["rejected"] == [] for r in rounds)
    assert all(math.isfinite(r["server_macro_ap"]) and math.isfinite(r["server_micro_ap"]) for r in rounds)
    state = AdapterState.load(run_dir / "adapters" / "final.safetensors")
    head = next(sp for sp in state.specs if sp.kind == "head")
    assert head.num_classes == n_labels and tuple(state["fc.weight"].shape)[0] == n_labels
    assert (run_dir / "plots" / "ap.png").stat().st_size > 1000 and (run_dir / "plots" / "epsilon.png").is_file()


def test_flair_needs_a_backbone_source(flair_file: Path, tmp_path: Path) -> None:
    from fedge.simulations.runner import run

    cfg = load_config("flair", {"dataset.flair_path": str(flair_file), "federation.public_users": 0})
    with pytest.raises(ConfigError, match="public_users"):
        run(cfg, tmp_path / "r", progress=False)


def test_flair_from_a_local_checkpoint(flair_file: Path, tmp_path: Path) -> None:
    """No public users: the backbone is a local checkpoint (torchvision/timm layout) with a new classifier."""
    import torch

    from fedge.models import create_model
    from fedge.simulations.runner import run

    ckpt = tmp_path / "resnet_gn_small-rgb.pth"
    torch.save({"state_dict": create_model("resnet_gn_small", num_classes=1000, in_chans=3).state_dict()}, ckpt)
    cfg = load_config("flair", {"dataset.flair_path": str(flair_file), "dataset.image_size": 16,
                                "federation.public_users": 0, "federation.pretrained_path": str(ckpt),
                                "federation.rounds": 1, "federation.cohort_size": 3, "federation.min_clients": 2,
                                "federation.eval_users": 2, "federation.eval_every": 1, "simulation.test_users": 3,
                                "simulation.backend": "inprocess", "simulation.user_epsilon": math.inf})
    s = run(cfg, tmp_path / "r", progress=False)
    assert s["population"] == 12 and s["num_classes"] == 17 and s["rounds_done"] == 1
    assert s["baseline_test"] == {}  # the checkpoint's classifier was never trained on FLAIR's labels
    assert all(math.isfinite(s["final_test"][k]) for k in ("macro_ap", "micro_ap"))
