"""Server-side evaluation: the full model's size needs no held-out users; FLAIR's held-out users and label count."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fedge.server.config import FederationConfig
from fedge.server.evaluation import ServerEvaluator
from fedge.server.task import adapted_model

TINY = {"pretrain_images": 300, "pretrain_epochs": 0.2}


def test_full_model_bytes_needs_no_eval_users(fedge_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_data(*args: object, **kwargs: object) -> None:
        raise AssertionError("held-out data was loaded")

    monkeypatch.setattr("fedge.server.evaluation.pooled", no_data)
    ev = ServerEvaluator(FederationConfig(eval_users=0, adapter="film+head", **TINY))  # type: ignore[arg-type]
    model = adapted_model(ev.pretrain, ev.specs)
    assert ev.full_model_bytes() == sum(t.numel() * t.element_size() for t in model.state_dict().values()) > 0
    assert ev.evaluate(ev.initial_state()) == {}


def test_flair_evaluator_heads_and_held_out_users(fedge_home: Path, tmp_path: Path) -> None:
    from fedge.data.flair_hdf5 import write_tiny_flair_hdf5
    from fedge.data.source import user_ids

    path = tmp_path / "flair.hdf5"
    vocab = {f"f{i}": f"c{i % 17:02d}" for i in range(34)}
    users = {f"t{i}": ("train", 5) for i in range(6)} | {"v0": ("val", 6), "v1": ("val", 6), "x0": ("test", 4)}
    truth = write_tiny_flair_hdf5(path, users=users, image_hw=12, vocabulary=vocab)
    n_coarse = len({c for t in truth.values() for labels in t["coarse"] for c in labels})
    cfg = FederationConfig(dataset="flair", flair_path=str(path), public_users=2, label_set="coarse", eval_users=2,
                           adapter="film+head", pretrain_images=40, pretrain_epochs=0.5)
    ev = ServerEvaluator(cfg)
    assert ev.task.num_classes == n_coarse and ev.specs[-1].num_classes == n_coarse
    assert (ev.pretrain.in_chans, ev.pretrain.image_size, ev.pretrain.num_classes) == (3, 12, n_coarse)
    assert not set(user_ids(ev.task.source, "public")) & set(user_ids(ev.task.source, "train"))
    metrics = ev.evaluate(ev.initial_state())
    assert set(metrics) == {"macro_ap", "micro_ap"} and all(math.isfinite(v) for v in metrics.values())
    assert ev.full_model_bytes() > 0
