"""Real processes on loopback: fed-server (SuperLink + ServerApp) and fed-clients (SuperNodes) over TLS
with node authentication, FiLM adapters under client DP-SGD and user-level DP-FedAvg.

A client is killed during a round and the run goes on; the server is killed (its whole process tree) after
a committed round and ``--resume`` finishes the run with one ledger spend per round; an unknown node is
refused. Takes a few minutes on 2 cores: ``pytest -m "slow and integration" tests/server``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedge.privacy.ledger import PrivacyLedger

from .conftest import TINY
from .procs import free_port as _port
from .procs import kill_tree, rounds_done, stop, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PY = sys.executable


@pytest.mark.timeout(3000)
def test_fed_server_three_clients_tls_auth_dp_kill_and_resume(fedge_home: Path, tmp_path: Path) -> None:
    env = {**os.environ, "FEDGE_HOME": str(fedge_home), "PYTHONUNBUFFERED": "1"}
    run = lambda *a: subprocess.run([PY, *a], env=env, check=True, capture_output=True, text=True)  # noqa: E731
    run("-m", "fedge.server.cli", "certs", str(tmp_path / "certs"))
    for name in ("a", "b", "c", "intruder"):
        run("-m", "fedge.client.cli", "keygen", str(tmp_path / "keys"), "--name", name)
    port, state = _port(), tmp_path / "server"
    server_cmd = [PY, "-m", "fedge.server.cli", "--state-dir", str(state), "--certs", str(tmp_path / "certs"),
                  "--port", str(port), "--authorized-keys", *[str(tmp_path / "keys" / f"{n}.pub") for n in "abc"]]
    flags = ["--rounds", "3", "--cohort-size", "3", "--min-clients", "2", "--round-timeout", "180", "--cohort-grace", "60",
             "--adapter", "film", "--client-noise", "0.8", "--client-clip", "1.0", "--user-noise", "0.5",
             "--user-clip", "1.0", "--population-size", "3", "--num-users", "40", "--eval-users", "3",
             "--no-federated-eval", "--local-epochs", "1", "--lr", "0.1",
             "--pretrain-images", str(TINY["pretrain-images"]), "--pretrain-epochs", str(TINY["pretrain-epochs"])]
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(name: str, cmd: list[str]) -> subprocess.Popen:
        return subprocess.Popen(cmd, env=env, stdout=open(logs / f"{name}.log", "ab"), stderr=subprocess.STDOUT)

    def client(name: str, user: str, *extra: str) -> subprocess.Popen:
        return start(name, [PY, "-m", "fedge.client.cli", "--server", f"127.0.0.1:{port}",
                            "--root-cert", str(tmp_path / "certs" / "ca.crt"), "--key", str(tmp_path / "keys" / name),
                            "--user-id", user, "--num-users", "40", "--state-dir", str(tmp_path / name), *extra])

    server = start("server", server_cmd + flags)
    clients: dict[str, subprocess.Popen] = {}
    try:
        wait_until(lambda: (state / "flower-app" / "pyproject.toml").exists(), 120, "the SuperLink", [server])
        clients = {n: client(n, u) for n, u in (("a", "u00001"), ("b", "u00002"), ("c", "u00003"))}
        # no retry window: a refused node must exit while the server is still up (an unreachable server is
        # waited for indefinitely, as a device should across a server restart)
        intruder = clients["intruder"] = client("intruder", "u00004", "--refused-retry", "0")
        assert intruder.wait(timeout=300) != 0, "a node with an unregistered key must be refused"
        assert "refused this node" in (logs / "intruder.log").read_text()
        clients.pop("intruder")
        wait_until(lambda: 1 in rounds_done(state), 900, "round 1", [server])
        kill_tree(clients.pop("c"))  # a device dies during round 2
        wait_until(lambda: 2 in rounds_done(state), 900, "round 2 without client c", [server])
        kill_tree(server)  # the server machine crashes after round 2 committed
        assert rounds_done(state) == [1, 2]

        server = start("server-resumed", server_cmd + ["--resume"])
        assert server.wait(timeout=1200) == 0, (logs / "server-resumed.log").read_text()[-3000:]
    finally:
        for p in [*clients.values(), server]:
            stop(p)

    out = (logs / "server.log").read_text() + (logs / "server-resumed.log").read_text()
    assert "round 1/3" in out and "round 3/3" in out and "done: 3 rounds" in out
    assert rounds_done(state) == [1, 2, 3]
    metrics = [json.loads(x) for x in (state / "metrics.jsonl").read_text().splitlines()]
    by_round = {m["round"]: m for m in metrics if "round" in m and not m.get("event") and m["round"] > 0}
    assert by_round[1]["clients"] == 3 and by_round[2]["clients"] == 2
    assert len(by_round[2]["rejected"]) == 1  # the killed client: no reply, or the SuperLink's error reply
    assert by_round[2]["rejected"][0]["reason"] in ("timeout", "client_error")
    assert all(0 < m["client_eps_max"] < float("inf") for m in by_round.values())
    with PrivacyLedger(state / "privacy-ledger.sqlite") as ledger:
        spends = ledger.spends("federation")
        assert [s.round for s in spends] == [1, 2, 3]  # one user-level spend per round, none twice
        assert by_round[3]["user_eps"] == pytest.approx(ledger.epsilon("federation", "population"))
    assert (state / "adapters" / "final.safetensors").is_file()
