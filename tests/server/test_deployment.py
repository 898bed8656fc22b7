"""fed-client's SuperNode: the poll policy, the Flower internals it patches, and one real round on loopback.

The round runs real processes (fed-server with its SuperLink, two fed-clients with TLS and node keys) and
checks that each ClientApp message ran in a warm process forked from fed-client's preloaded forkserver.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedge.client.supernode import IDLE_POLL_S, PollPolicy, check_flower_internals
from fedge.server.superlink import FAST_PULL_BACKOFF, fast_pulls

from .conftest import TINY
from .procs import free_port, rounds_done, stop, wait_until

PY = sys.executable


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def test_poll_policy_is_fast_only_while_a_run_is_active() -> None:
    clock = FakeClock()
    policy = PollPolicy(idle_s=3.0, active_s=0.2, window_s=120.0, clock=clock, sleep=clock.sleep)
    policy.sleep(IDLE_POLL_S)  # idle from the start: Flower's own interval
    assert clock.slept == [3.0]
    policy.sleep(0.5)  # waiting for a ClientApp's reply: a message is in progress
    assert clock.slept[-1] == 0.05
    policy.sleep(IDLE_POLL_S)
    assert clock.slept[-1] == 0.2
    clock.now += 121.0  # the run went quiet
    policy.sleep(IDLE_POLL_S)
    assert clock.slept[-1] == 3.0
    with pytest.raises(ValueError, match="> 0"):
        PollPolicy(idle_s=0.0)


def test_the_flower_internals_fedge_patches_are_there() -> None:
    check_flower_internals()  # fails loudly after a Flower upgrade that moves them
    from flwr.superlink.grid import http_grid
    from flwr.supernode import start_client_internal
    from flwr.supernode.runtime import run_clientapp

    for pull in (http_grid.pull_objects, run_clientapp.pull_and_inflate_object_from_tree,
                 start_client_internal.pull_objects):
        assert fast_pulls(pull).keywords == FAST_PULL_BACKOFF
    with pytest.raises(RuntimeError, match="backoff"):
        fast_pulls(lambda ids: ids)


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_one_round_over_tls_runs_in_warm_clientapp_processes(fedge_home: Path, tmp_path: Path) -> None:
    env = {**os.environ, "FEDGE_HOME": str(fedge_home), "PYTHONUNBUFFERED": "1"}
    run = lambda *a: subprocess.run([PY, *a], env=env, check=True, capture_output=True, text=True)  # noqa: E731
    run("-m", "fedge.server.cli", "certs", str(tmp_path / "certs"))
    for name in ("a", "b"):
        run("-m", "fedge.client.cli", "keygen", str(tmp_path / "keys"), "--name", name)
    port, state, logs = free_port(), tmp_path / "server", tmp_path / "logs"
    logs.mkdir()
    server = subprocess.Popen(
        [PY, "-m", "fedge.server.cli", "--state-dir", str(state), "--certs", str(tmp_path / "certs"), "--port",
         str(port), "--authorized-keys", str(tmp_path / "keys"), "--rounds", "1", "--cohort-size", "2",
         "--min-clients", "2", "--adapter", "film", "--num-users", "40", "--eval-users", "0",
         "--no-federated-eval", "--local-epochs", "0.5", "--round-timeout", "300",
         "--pretrain-images", str(TINY["pretrain-images"]), "--pretrain-epochs", str(TINY["pretrain-epochs"])],
        env=env, stdout=open(logs / "server.log", "wb"), stderr=subprocess.STDOUT)
    clients: list[subprocess.Popen] = []
    try:
        wait_until(lambda: (state / "flower-app" / "pyproject.toml").exists(), 180, "the SuperLink", [server])
        clients = [subprocess.Popen(
            [PY, "-m", "fedge.client.cli", "--server", f"127.0.0.1:{port}", "--root-cert",
             str(tmp_path / "certs" / "ca.crt"), "--key", str(tmp_path / "keys" / n), "--user-id", f"u0000{i}",
             "--num-users", "40", "--state-dir", str(tmp_path / n)],
            env=env, stdout=open(logs / f"{n}.log", "wb"), stderr=subprocess.STDOUT) for i, n in enumerate("ab", 1)]
        assert server.wait(timeout=500) == 0, (logs / "server.log").read_text()[-3000:]
        assert rounds_done(state) == [1]
    finally:
        for p in [*clients, server]:
            stop(p)
    for n in "ab":
        log = (logs / f"{n}.log").read_text()
        assert "warm ClientApp executor ready" in log, log[-2000:]
        assert "ClientApp task 1 in warm process" in log, log[-2000:]
        assert "Sent successfully" in log, log[-2000:]


def test_cold_fallback_command_is_one_flwr_clientapp_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supernode.cli.flwr_clientapp import _parse_args_run_flwr_clientapp

    from fedge.client import supernode

    started: list[list[str]] = []
    monkeypatch.setattr(supernode.subprocess, "Popen", lambda cmd: started.append(cmd))
    supernode.WarmExecutor("127.0.0.1:9999", preload=()).launch_cold("tok")
    assert len(started) == 1 and started[0][0].endswith("flwr-clientapp")
    args = _parse_args_run_flwr_clientapp().parse_args(started[0][1:])
    assert (args.runtime_api_address, args.token, args.insecure) == ("127.0.0.1:9999", "tok", True)
