"""Privacy ledger: durable spends, budget refusal before work, crash safety under SIGKILL, CLI."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedge.errors import ConfigError, PrivacyBudgetExceeded
from fedge.privacy.accountants import compute_epsilon
from fedge.privacy.ledger import POPULATION, PrivacyLedger, main


def test_records_and_composes(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "l.db") as ledger:
        ledger.open_run("r1", epsilon=10.0, delta=1e-5, unit="user")
        s1 = ledger.record("r1", 1, POPULATION, 1.0, 0.1, 1)
        s2 = ledger.record("r1", 2, POPULATION, 1.0, 0.1, 1)
        assert s1.epsilon_after < s2.epsilon_after
        assert s2.epsilon_after == pytest.approx(compute_epsilon(1.0, 0.1, 2, 1e-5))
        assert (s2.unit, s2.delta, s2.accountant) == ("user", 1e-5, "rdp")
        assert [s.round for s in ledger.spends("r1")] == [1, 2]
        assert ledger.epsilon("r1", POPULATION) == pytest.approx(s2.epsilon_after)
        assert ledger.epsilon("r1", "client-7") == 0.0
    with PrivacyLedger(tmp_path / "l.db") as again:
        assert again.spends("r1") == [s1, s2]
        assert again.open_run("r1", epsilon=10.0, delta=1e-5, unit="user").epsilon == 10.0
        with pytest.raises(ConfigError, match="already exists"):
            again.open_run("r1", epsilon=20.0, delta=1e-5, unit="user")


def test_over_budget_is_refused_before_recording(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "l.db") as ledger:
        ledger.open_run("r", epsilon=2.0, delta=1e-5)
        ledger.check("r", "c1", 1.0, 0.01, 100)
        ledger.record("r", 1, "c1", 1.0, 0.01, 100)
        with pytest.raises(PrivacyBudgetExceeded, match="over the budget of 2"):
            ledger.check("r", "c1", 1.0, 0.01, 100_000)
        with pytest.raises(PrivacyBudgetExceeded):
            ledger.record("r", 2, "c1", 1.0, 0.01, 100_000)
        with pytest.raises(PrivacyBudgetExceeded):
            ledger.record("r", 2, "c1", 0.0, 0.01, 1)  # no noise: infinite epsilon
        assert len(ledger.spends("r")) == 1
        ledger.record("r", 2, "c2", 1.0, 0.01, 100)  # another subject has its own budget
        with pytest.raises(ConfigError, match="open_run"):
            ledger.record("nope", 1, "c1", 1.0, 0.1, 1)
        ledger.open_run("free", epsilon=math.inf, delta=1e-5)
        assert ledger.record("free", 1, "c1", 0.0, 1.0, 10).epsilon_after == math.inf


WRITER = textwrap.dedent(
    """
    import sys
    from fedge.privacy.ledger import PrivacyLedger, POPULATION
    ledger = PrivacyLedger(sys.argv[1])
    ledger.open_run("crash", epsilon=1e9, delta=1e-5, unit="user")
    for rnd in range(1, 100_000):
        ledger.record("crash", rnd, POPULATION, 1.0, 0.05, 1)
        print(rnd, flush=True)
    """
)


@pytest.mark.integration
def test_survives_sigkill_mid_run(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True, env={**os.environ}
    )
    assert proc.stdout is not None
    acknowledged = 0
    for line in proc.stdout:
        acknowledged = int(line)
        if acknowledged >= 30:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    raw.close()
    with PrivacyLedger(db) as ledger:
        spends = ledger.spends("crash")
        # Every acknowledged spend is durable; at most the in-flight one beyond it.
        assert len(spends) >= acknowledged
        assert [s.round for s in spends] == list(range(1, len(spends) + 1))
        eps = [s.epsilon_after for s in spends]
        assert eps == sorted(eps)
        history = [(s.noise_multiplier, s.sample_rate, s.steps) for s in spends]
        from fedge.privacy.accountants import Accountant

        assert Accountant("rdp", history).get_epsilon(1e-5) == pytest.approx(eps[-1])
        # The run resumes where it stopped.
        ledger.open_run("crash", epsilon=1e9, delta=1e-5, unit="user")
        nxt = ledger.record("crash", len(spends) + 1, POPULATION, 1.0, 0.05, 1)
        assert nxt.epsilon_after > eps[-1]


def test_cli_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "l.db"
    with PrivacyLedger(db) as ledger:
        ledger.open_run("a", epsilon=8.0, delta=1e-5, unit="user")
        ledger.open_run("b", epsilon=2.0, delta=1e-6)
        ledger.record("a", 3, POPULATION, 1.2, 0.1, 1)
        ledger.record("b", 1, "client-1", 1.0, 0.01, 10)
    assert main(["show", str(db), "--run", "a"]) == 0
    out = capsys.readouterr().out
    assert "run a: budget epsilon=8 delta=1e-05 per user, rdp, poisson" in out
    assert "population" in out and "client-1" not in out
    assert main(["show", str(db), "--run", "zzz"]) == 2
    assert "not in ledger" in capsys.readouterr().err
    assert main(["show", str(tmp_path / "missing.db")]) == 2
    proc = subprocess.run(
        [sys.executable, "-m", "fedge.privacy.ledger", "show", str(db)], capture_output=True, text=True, check=True
    )
    assert "client-1" in proc.stdout and "population" in proc.stdout
