"""Minimal durable per-round record (SQLite) used until the run ledger is fedge.privacy's."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any


class RoundLedgerStore:
    """``rounds(round PRIMARY KEY, epsilon, accountant JSON, time)``; inserting a round twice keeps the first."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with self._conn() as c:
            c.execute("CREATE TABLE IF NOT EXISTS rounds (round INTEGER PRIMARY KEY, epsilon REAL, "
                      "accountant TEXT, time REAL)")

    def _conn(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, isolation_level=None, timeout=30)

    def record(self, round_num: int, epsilon: float, accountant: dict[str, Any]) -> None:
        with self._conn() as c:
            c.execute("INSERT OR IGNORE INTO rounds VALUES (?, ?, ?, ?)",
                      (round_num, epsilon, json.dumps(accountant), time.time()))

    def rounds(self) -> list[int]:
        with self._conn() as c:
            return [int(r[0]) for r in c.execute("SELECT round FROM rounds ORDER BY round")]
