"""A run's state directory: resolved config, per-round global adapters, the commit record and JSONL metrics.

Layout of ``state_dir``::

    config.json                 resolved FederationConfig
    adapters/round-0003.safetensors
    checkpoint.json             the commit record: last completed round and its metrics
    metrics.jsonl               one line per completed round (plus ``"event"`` lines)
    privacy-ledger.sqlite       user-level privacy ledger (fedge.privacy)

A round commits in this order: ledger spend (``fedge.privacy``, before the aggregate is used) -> adapters
file -> ``checkpoint.json`` (atomic rename: the commit point) -> metrics line. On resume everything after
the last commit is discarded (metrics lines of later rounds) or reused (the ledger's spend for the
interrupted round, see :mod:`fedge.server.dp`), so no round is counted twice and no spend is lost.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedge.adapters import AdapterState
from fedge.errors import DataError


@dataclass
class Checkpoint:
    """What ``checkpoint.json`` holds."""

    round: int
    metrics: dict[str, Any] = field(default_factory=dict)


class RunStore:
    """Reads and writes one run's state directory."""

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        (self.dir / "adapters").mkdir(parents=True, exist_ok=True)

    @property
    def config_path(self) -> Path:
        return self.dir / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.jsonl"

    @property
    def ledger_path(self) -> Path:
        return self.dir / "privacy-ledger.sqlite"

    def adapters_path(self, round_num: int) -> Path:
        return self.dir / "adapters" / f"round-{round_num:04d}.safetensors"

    def final_path(self) -> Path:
        return self.dir / "adapters" / "final.safetensors"

    # -- checkpoints ---------------------------------------------------------------------------
    def load_checkpoint(self) -> tuple[Checkpoint, AdapterState] | None:
        """The last committed round and its global adapters, or ``None`` for a fresh run."""
        path = self.dir / "checkpoint.json"
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
            ckpt = Checkpoint(int(raw["round"]), raw.get("metrics", {}))
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"checkpoint {path} is unreadable ({exc}); remove the state dir to start over") from None
        return ckpt, AdapterState.load(self.adapters_path(ckpt.round))

    def save_adapters(self, round_num: int, state: AdapterState) -> None:
        state.save(self.adapters_path(round_num))

    def commit(self, ckpt: Checkpoint) -> None:
        """Atomically mark ``ckpt.round`` as completed (its adapters file must already exist)."""
        if not self.adapters_path(ckpt.round).is_file():
            raise DataError(f"adapters for round {ckpt.round} missing; save them before committing")
        path = self.dir / "checkpoint.json"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"round": ckpt.round, "metrics": ckpt.metrics}, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)

    # -- metrics -------------------------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        out = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line from a crash
        return out

    def reconcile_metrics(self, ckpt: Checkpoint | None) -> None:
        """Drop round lines after the last commit; re-add the committed round's line if it was lost."""
        last = ckpt.round if ckpt else 0
        kept = [r for r in self.read_metrics() if "round" not in r or r.get("event") or r["round"] <= last]
        rounds = {r["round"] for r in kept if "round" in r and not r.get("event")}
        if ckpt and ckpt.round > 0 and ckpt.round not in rounds and ckpt.metrics:
            kept.append(ckpt.metrics)
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        tmp.replace(self.metrics_path)
