"""Durable privacy ledger: one SQLite row per spend, and budget enforcement before work starts.

A run is opened with its budget (epsilon, delta, unit, accountant). Each spend names a *subject*:
``"population"`` for user-level DP on the server, or a client id for that client's example-level DP.
Epsilon composes over all spends of the same (run, subject). SQLite runs in WAL mode with
``synchronous=FULL`` and every spend is one transaction, so a crash (even SIGKILL) loses at most the
spend being written, never corrupts earlier ones.

Show a run's ledger: ``python -m fedge.privacy.ledger show <db> [--run RUN]``.
"""

from __future__ import annotations

import argparse
import math
import sqlite3
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedge.errors import ConfigError, FedgeError, PrivacyBudgetExceeded
from fedge.privacy.accountants import ACCOUNTANTS, Accountant, PrivacyReport

POPULATION = "population"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY, unit TEXT NOT NULL, epsilon_budget REAL NOT NULL, delta REAL NOT NULL,
    accountant TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS spends (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run TEXT NOT NULL REFERENCES runs(run), round INTEGER NOT NULL,
    subject TEXT NOT NULL, unit TEXT NOT NULL, noise_multiplier REAL NOT NULL, sample_rate REAL NOT NULL,
    steps INTEGER NOT NULL, delta REAL NOT NULL, epsilon_after REAL NOT NULL, accountant TEXT NOT NULL,
    created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS spends_run_subject ON spends(run, subject, id);
"""


@dataclass(frozen=True)
class Budget:
    """A run's configured budget: epsilon at ``delta``, per ``unit``, composed with ``accountant``."""

    run: str
    epsilon: float
    delta: float
    unit: str = "example"
    accountant: str = "rdp"


@dataclass(frozen=True)
class Spend:
    """One recorded spend; ``epsilon_after`` is the subject's total after it."""

    run: str
    round: int
    subject: str
    unit: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    epsilon_after: float
    accountant: str

    def report(self) -> PrivacyReport:
        """The subject's guarantee after this spend."""
        return PrivacyReport(self.epsilon_after, self.delta, self.unit, self.accountant)  # type: ignore[arg-type]


class PrivacyLedger:
    """A SQLite-backed record of spends for one or more runs. Safe to reopen after a crash."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self) -> PrivacyLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open_run(
        self, run: str, *, epsilon: float, delta: float, unit: str = "example", accountant: str = "rdp"
    ) -> Budget:
        """Register a run's budget, or return the stored one if it matches (resume after a crash)."""
        if not (epsilon > 0):
            raise ConfigError(f"epsilon budget must be > 0 (math.inf for no limit), got {epsilon}")
        if not 0 < delta < 1:
            raise ConfigError(f"delta must be in (0, 1), got {delta}")
        if unit not in ("example", "user"):
            raise ConfigError(f"unit must be 'example' or 'user', got {unit!r}")
        if accountant not in ACCOUNTANTS:
            raise ConfigError(f"unknown accountant {accountant!r}; choose one of {sorted(ACCOUNTANTS)}")
        wanted = Budget(run, float(epsilon), float(delta), unit, accountant)
        with self._tx():
            stored = self.budget(run, missing_ok=True)
            if stored is None:
                self._db.execute(
                    "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?)",
                    (run, unit, float(epsilon), float(delta), accountant, time.time()),
                )
                return wanted
        if stored != wanted:
            raise ConfigError(
                f"run {run!r} already exists in {self.path} with budget {stored}; "
                "resume it with the same settings or pick a new run name"
            )
        return stored

    def budget(self, run: str, missing_ok: bool = False) -> Budget | None:
        """The stored budget of ``run`` (None if unknown and ``missing_ok``)."""
        row = self._db.execute(
            "SELECT run, epsilon_budget, delta, unit, accountant FROM runs WHERE run = ?", (run,)
        ).fetchone()
        if row is None:
            if missing_ok:
                return None
            raise ConfigError(f"run {run!r} is not in ledger {self.path}; call open_run first")
        return Budget(*row)

    def accountant(self, run: str, subject: str) -> Accountant:
        """An accountant rebuilt from every recorded spend of ``subject`` in ``run``."""
        budget = self.budget(run)
        assert budget is not None
        history = self._db.execute(
            "SELECT noise_multiplier, sample_rate, steps FROM spends WHERE run = ? AND subject = ? ORDER BY id",
            (run, subject),
        ).fetchall()
        return Accountant(budget.accountant, history)  # type: ignore[arg-type]

    def epsilon(self, run: str, subject: str) -> float:
        """Epsilon spent so far by ``subject`` in ``run`` at the run's delta."""
        budget = self.budget(run)
        assert budget is not None
        return self.accountant(run, subject).get_epsilon(budget.delta)

    def check(self, run: str, subject: str, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """Epsilon after the planned work, or :class:`PrivacyBudgetExceeded` if it would pass the budget."""
        budget = self.budget(run)
        assert budget is not None
        acc = self.accountant(run, subject)
        after = acc.epsilon_after(noise_multiplier, sample_rate, steps, budget.delta)
        if after > budget.epsilon:
            now = acc.get_epsilon(budget.delta)
            raise PrivacyBudgetExceeded(
                f"run {run!r}, {subject}: {steps} steps at noise {noise_multiplier:g}, rate {sample_rate:g} "
                f"would bring epsilon from {now:.3f} to {after:.3f}, over the budget of {budget.epsilon:g} "
                f"(delta={budget.delta:g}, per {budget.unit}); raise the noise, run fewer steps or stop here"
            )
        return after

    def record(
        self, run: str, round: int, subject: str, noise_multiplier: float, sample_rate: float, steps: int
    ) -> Spend:
        """Check the budget and durably append one spend in a single transaction; returns it."""
        budget = self.budget(run)
        assert budget is not None
        with self._tx():
            after = self.check(run, subject, noise_multiplier, sample_rate, steps)
            spend = Spend(
                run, int(round), subject, budget.unit, float(noise_multiplier), float(sample_rate),
                int(steps), budget.delta, after, budget.accountant,
            )
            self._db.execute(
                "INSERT INTO spends (run, round, subject, unit, noise_multiplier, sample_rate, steps, delta, "
                "epsilon_after, accountant, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*_astuple(spend), time.time()),
            )
        return spend

    def spends(self, run: str | None = None) -> list[Spend]:
        """All spends, oldest first, optionally of one run."""
        sql = (
            "SELECT run, round, subject, unit, noise_multiplier, sample_rate, steps, delta, epsilon_after, "
            "accountant FROM spends"
        )
        rows = (
            self._db.execute(sql + " WHERE run = ? ORDER BY id", (run,))
            if run is not None
            else self._db.execute(sql + " ORDER BY id")
        ).fetchall()
        return [Spend(*r) for r in rows]

    def runs(self) -> list[Budget]:
        """Every registered run's budget."""
        rows = self._db.execute("SELECT run, epsilon_budget, delta, unit, accountant FROM runs ORDER BY run")
        return [Budget(*r) for r in rows.fetchall()]

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, so concurrent writers serialise and a check+insert is atomic."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")
            self.owner = True
        else:
            self.owner = False

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if self.owner:
            self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _astuple(spend: Spend) -> tuple:
    return (
        spend.run, spend.round, spend.subject, spend.unit, spend.noise_multiplier, spend.sample_rate,
        spend.steps, spend.delta, spend.epsilon_after, spend.accountant,
    )


def format_ledger(ledger: PrivacyLedger, run: str | None = None) -> str:
    """A human-readable table of budgets and spends."""
    lines = []
    for b in ledger.runs():
        if run is not None and b.run != run:
            continue
        eps = "inf" if math.isinf(b.epsilon) else f"{b.epsilon:g}"
        lines.append(f"run {b.run}: budget epsilon={eps} delta={b.delta:g} per {b.unit}, {b.accountant}, poisson")
        lines.append(f"  {'round':>5} {'subject':<14} {'sigma':>8} {'q':>8} {'steps':>6} {'eps_after':>10}")
        for s in ledger.spends(b.run):
            lines.append(
                f"  {s.round:>5} {s.subject:<14} {s.noise_multiplier:>8.4g} {s.sample_rate:>8.4g} "
                f"{s.steps:>6} {s.epsilon_after:>10.4f}"
            )
    if run is not None and not lines:
        raise ConfigError(f"run {run!r} is not in ledger {ledger.path}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``show <db> [--run RUN]`` prints the ledger; errors become one line and exit code 2."""
    parser = argparse.ArgumentParser(prog="fedge-privacy-ledger", description="Inspect a fedge privacy ledger.")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print budgets and spends")
    show.add_argument("db", type=Path)
    show.add_argument("--run", default=None)
    args = parser.parse_args(argv)
    try:
        if not args.db.exists():
            raise ConfigError(f"no ledger at {args.db}")
        with PrivacyLedger(args.db) as ledger:
            print(format_ledger(ledger, args.run))
    except FedgeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
