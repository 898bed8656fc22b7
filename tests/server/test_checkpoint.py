"""Run state: commit record, metrics reconciliation after a crash, resume settings."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from fedge.adapters import AdapterSpec, AdapterState
from fedge.errors import ConfigError, DataError
from fedge.server.checkpoint import Checkpoint, RunStore
from fedge.server.cli import build_parser, resolve_config
from fedge.server.config import FederationConfig


def _state(v: float) -> AdapterState:
    return AdapterState({"g": torch.full((3,), v)}, [AdapterSpec(kind="film")], "h" * 64)


def test_commit_needs_adapters_and_roundtrips(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    assert store.load_checkpoint() is None
    with pytest.raises(DataError):
        store.commit(Checkpoint(1, {}))
    store.save_adapters(1, _state(1.0))
    store.commit(Checkpoint(1, {"round": 1}))
    ckpt, state = store.load_checkpoint()  # type: ignore[misc]
    assert ckpt.round == 1 and torch.equal(state["g"], torch.ones(3))


def test_reconcile_drops_uncommitted_and_restores_lost_line(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    for r in (1, 2, 3):
        store.append_metrics({"round": r})
    with open(store.metrics_path, "a") as f:
        f.write('{"round": 4, "torn')  # a crash mid-write
    store.reconcile_metrics(Checkpoint(2, {"round": 2}))
    assert [m["round"] for m in store.read_metrics()] == [1, 2]
    store2 = RunStore(tmp_path / "b")
    store2.append_metrics({"round": 1})
    store2.reconcile_metrics(Checkpoint(2, {"round": 2, "x": 1}))
    assert store2.read_metrics() == [{"round": 1}, {"round": 2, "x": 1}]


def test_resume_keeps_settings_and_new_run_refuses_used_dir(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    args = build_parser().parse_args(["--state-dir", str(tmp_path), "--rounds", "4", "--lr", "0.2"])
    cfg = resolve_config(args, store)
    assert cfg.rounds == 4 and cfg.lr == 0.2 and cfg == FederationConfig(rounds=4, lr=0.2)
    cfg.save(store.config_path)
    store.save_adapters(0, _state(0.0))
    store.commit(Checkpoint(0, {}))
    with pytest.raises(ConfigError, match="already holds a run"):
        resolve_config(args, store)
    resumed = resolve_config(build_parser().parse_args(["--state-dir", str(tmp_path), "--resume"]), store)
    assert resumed == cfg
    with pytest.raises(ConfigError, match="lr"):
        resolve_config(build_parser().parse_args(["--state-dir", str(tmp_path), "--resume", "--lr", "1"]), store)
    assert isinstance(args, argparse.Namespace)


def test_fed_server_flags_select_the_real_flair_file(tmp_path: Path) -> None:
    base = ["--state-dir", str(tmp_path), "--dataset", "flair"]
    with pytest.raises(ConfigError, match="flair_path"):
        resolve_config(build_parser().parse_args(base), RunStore(tmp_path))
    args = build_parser().parse_args([*base, "--flair-path", "f.hdf5", "--public-users", "50", "--image-size", "32",
                                      "--label-set", "coarse"])
    cfg = resolve_config(args, RunStore(tmp_path))
    assert (cfg.dataset, cfg.flair_path, cfg.public_users, cfg.image_size, cfg.label_set) == (
        "flair", "f.hdf5", 50, 32, "coarse")
