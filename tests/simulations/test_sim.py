"""fed-sim end to end on tiny settings: determinism, epsilon vs the accountant, resume, CLI (FLAIR: test_flair.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedge.errors import ConfigError
from fedge.simulations.config import builtin_configs, load_config
from fedge.simulations.runner import run

from .conftest import tiny

VOLATILE = {"time", "round_s", "train_phase_s", "aggregate_s", "eval_s", "client_compute_max_s",
            "client_compute_mean_s"}


def _round_lines(run_dir: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in lines if "round" in r and not r.get("event")]


def _same(a: list[dict], b: list[dict]) -> bool:
    """Equal round lines; floats to 1e-7 relative (torch's CPU kernels may differ in the last bits)."""
    if len(a) != len(b) or any(set(x) != set(y) for x, y in zip(a, b)):
        return False
    return all(x[k] == pytest.approx(y[k], rel=1e-7) if isinstance(x[k], float) else x[k] == y[k]
               for x, y in zip(a, b) for k in x)


def test_shipped_configs_load() -> None:
    assert {"flair-style-small", "flair-style", "flair"} <= set(builtin_configs())
    small = load_config("flair-style-small")
    assert small.federation.user_dp and small.user_epsilon > 0 and small.backend == "ray"
    assert load_config("flair-style").num_users >= 10_000
    with pytest.raises(ConfigError, match="flair_path"):
        load_config("flair")
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config("flair-style-small", {"federation.no_such_thing": 1})


def test_same_seed_same_metrics(tmp_path: Path) -> None:
    # user-level clipping on, noise off: the server's DP noise comes from os.urandom by design
    cfg = load_config("flair-style-small", tiny(simulation__user_epsilon=math.inf))
    a = run(cfg, tmp_path / "a", progress=False)
    b = run(cfg, tmp_path / "b", progress=False)
    assert _same(_round_lines(tmp_path / "a"), _round_lines(tmp_path / "b"))
    assert a["final_test"] == pytest.approx(b["final_test"], rel=1e-7) and a["rounds_done"] == 2
    assert (tmp_path / "a" / "plots" / "ap.png").stat().st_size > 1000
    assert (tmp_path / "a" / "plots" / "epsilon.png").is_file()
    run(load_config("flair-style-small", tiny(simulation__user_epsilon=math.inf, federation__seed=1,
                                              federation__rounds=1)), tmp_path / "c", progress=False)
    assert not _same(_round_lines(tmp_path / "c")[:2], _round_lines(tmp_path / "a")[:2])


def test_user_dp_epsilon_matches_accountant(tmp_path: Path) -> None:
    from fedge.privacy.accountants import compute_epsilon

    cfg = load_config("flair-style-small", tiny(simulation__user_epsilon=4.0))
    s = run(cfg, tmp_path / "dp", progress=False)
    q = cfg.federation.cohort_size / s["population"]
    expected = compute_epsilon(s["user_noise_multiplier"], q, cfg.federation.rounds, cfg.federation.user_delta)
    assert s["user_noise_multiplier"] > 0 and s["population"] == 32
    assert s["user_epsilon"] == pytest.approx(expected, rel=1e-9)
    assert s["user_epsilon"] <= 4.0 + 0.05
    assert _round_lines(tmp_path / "dp")[-1]["user_eps"] == pytest.approx(expected, rel=1e-9)


def test_resume_and_config_mismatch(tmp_path: Path) -> None:
    cfg = load_config("flair-style-small", tiny(simulation__user_epsilon=2.0))
    run(cfg, tmp_path / "r", progress=False)
    ckpt_path = tmp_path / "r" / "checkpoint.json"
    m1 = [r for r in map(json.loads, (tmp_path / "r" / "metrics.jsonl").read_text().splitlines())
          if r.get("round") == 1 and not r.get("event")][0]
    ckpt_path.write_text(json.dumps({"round": 1, "metrics": m1}))  # as if killed during round 2
    s = run(cfg, tmp_path / "r", progress=False)
    assert [r["round"] for r in _round_lines(tmp_path / "r") if r["round"] > 0] == [1, 2]
    assert s["rounds_done"] == 2 and s["user_epsilon"] <= 2.0 + 0.05
    with pytest.raises(ConfigError, match="different config"):
        run(load_config("flair-style-small", tiny(simulation__user_epsilon=8.0)), tmp_path / "r", progress=False)


def test_cli_reports_errors_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from fedge.simulations.cli import main

    assert main(["--config", "no-such-config"]) == 2
    assert "no-such-config" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.integration
def test_ray_backend_matches_inprocess(tmp_path: Path) -> None:
    """Flower's Simulation Engine (Ray, 2 CPUs, 1 per actor) gives the in-process backend's metrics."""
    ov = tiny(simulation__user_epsilon=math.inf, federation__rounds=1, simulation__num_cpus=2)
    ray_s = run(load_config("flair-style-small", {**ov, "simulation.backend": "ray"}), tmp_path / "ray", progress=False)
    loc_s = run(load_config("flair-style-small", ov), tmp_path / "loc", progress=False)
    assert ray_s["backend"] == "ray" and ray_s["rounds_done"] == 1
    assert _same(_round_lines(tmp_path / "ray"), _round_lines(tmp_path / "loc"))
    assert ray_s["final_test"] == pytest.approx(loc_s["final_test"], rel=1e-7)


def test_config_saved_before_a_setting_existed_still_matches() -> None:
    from fedge.simulations.config import SimConfig
    from fedge.simulations.runner import config_diff

    new = json.loads(json.dumps(SimConfig().to_dict(), default=str))
    old = json.loads(json.dumps(new))
    for key in ("dataset", "flair_path", "image_size", "public_users", "pretrained_path"):
        del old["federation"][key]  # a run directory written before real-FLAIR support
    assert config_diff(old, new) == []
    new["federation"]["public_users"] = 3
    new["rounds"] = 1
    assert config_diff(old, new) == ["federation.public_users", "rounds"]
