"""Federation cost on a real local deployment: fed-server + N fed-clients over TLS with node auth.

Per round: wall time of the training phase split into client compute (the slowest client's time inside
the ClientApp handler: model set-up + local DP training) and framework overhead (everything else: ClientApp
process start, Flower's polling, serialisation, TLS, validation); bytes of the adapter update per client vs
the full model's bytes. Prints one JSON object whose last key is ``headline``.

    python benchmarks/federation.py            # default task: pretrained backbone, 3 clients, 3 rounds
    python benchmarks/federation.py --quick    # tiny backbone, 2 clients, 2 rounds (smoke check)

Both fed-client modes run in one invocation, one after the other: ``warm`` (fedge's default) and ``cold``
(Flower's own ClientApp start-up and poll interval), so their ratio is measured under the same conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PY = sys.executable


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_deployment(work: Path, clients: int, rounds: int, server_flags: list[str], env: dict[str, str],
                   timeout_s: float, client_flags: tuple[str, ...] = ()) -> tuple[list[dict[str, Any]], float]:
    """Run fed-server + ``clients`` fed-clients to completion; returns (metrics lines, total wall seconds)."""
    from fedge.server.security import make_certificates, make_node_keys  # what `fed-server certs` / keygen do

    make_certificates(work / "certs")
    names = [f"node{i}" for i in range(clients)]
    for n in names:
        make_node_keys(work / "keys", n)
    port, state = _port(), work / "server"
    t0 = time.perf_counter()
    server = subprocess.Popen(
        [PY, "-m", "fedge.server.cli", "--state-dir", str(state), "--certs", str(work / "certs"), "--port",
         str(port), "--authorized-keys", str(work / "keys"), "--rounds", str(rounds), "--cohort-size",
         str(clients), "--min-clients", str(clients), *server_flags],
        env=env, stdout=open(work / "server.log", "wb"), stderr=subprocess.STDOUT)
    procs = []
    try:
        deadline = time.monotonic() + 600
        while not (state / "flower-app").exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((work / "server.log").read_text()[-2000:])
            time.sleep(0.5)
        for i, n in enumerate(names):
            procs.append(subprocess.Popen(
                [PY, "-m", "fedge.client.cli", "--server", f"127.0.0.1:{port}", "--root-cert",
                 str(work / "certs" / "ca.crt"), "--key", str(work / "keys" / n), "--user-id", f"u{i + 1:05d}",
                 "--state-dir", str(work / n), *client_flags], env=env, stdout=open(work / f"{n}.log", "wb"),
                stderr=subprocess.STDOUT))
        code = server.wait(timeout=timeout_s)
        if code != 0:
            raise RuntimeError((work / "server.log").read_text()[-3000:])
    finally:
        for p in [*procs, server]:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
    wall = time.perf_counter() - t0
    lines = [json.loads(x) for x in (state / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [m for m in lines if "round" in m and not m.get("event") and m["round"] > 0], wall


def summarize(rounds: list[dict[str, Any]], goal_overhead: float, goal_bytes: float) -> dict[str, Any]:
    per_round = [{
        "round": m["round"], "train_phase_s": round(m["train_phase_s"], 3),
        "client_compute_s": round(m["client_compute_max_s"], 3),
        "overhead_s": round(m["train_phase_s"] - m["client_compute_max_s"], 3),
        "overhead_fraction": round(1 - m["client_compute_max_s"] / m["train_phase_s"], 4),
        "round_s_incl_eval": round(m["round_s"], 3),
        "delivery_s": round(m.get("client_delivery_mean_s", 0.0), 3),
        "clientapp_process_startup_s": round(m.get("client_process_startup_mean_s", 0.0), 3),
        "bytes_sent_per_client": m["bytes_sent_per_client"],
        "bytes_received_per_client": m["bytes_received_per_client"],
        "clients": m["clients"],
    } for m in rounds]
    # steady state: the first round also pays one-off costs (Flower App install on each SuperNode)
    steady = per_round[1:] or per_round
    overhead = statistics.mean(r["overhead_fraction"] for r in steady)
    full = rounds[0]["full_model_bytes"]
    update = statistics.mean(r["bytes_received_per_client"] for r in per_round)
    return {
        "per_round": per_round,
        "overhead_fraction_steady": round(overhead, 4),
        "client_compute_s_steady": round(statistics.mean(r["client_compute_s"] for r in steady), 3),
        "overhead_s_steady": round(statistics.mean(r["overhead_s"] for r in steady), 3),
        "overhead_breakdown_note": "delivery_s = server send -> ClientApp handler start (SuperNode poll wait, "
                                   "ClientApp process start and imports, included); clientapp_process_startup_s "
                                   "is the part spent starting that process",
        "adapter_update_bytes": update,
        "full_model_bytes": full,
        "update_to_full_model_ratio": round(update / full, 6),
        "bytes_goal_met": update / full <= goal_bytes,
        "headline": {"metric": "framework overhead fraction of round time (steady rounds)",
                     "value": round(overhead, 4), "goal": goal_overhead, "higher_is_better": False,
                     "met": overhead <= goal_overhead},
    }


#: fed-client start-up modes compared side by side: fedge's default, and Flower's own behaviour
MODES = {"warm": (), "cold": ("--cold-start", "--active-poll-interval", "3")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny backbone, 2 clients, 2 rounds (about a minute per mode)")
    p.add_argument("--clients", type=int)
    p.add_argument("--rounds", type=int)
    p.add_argument("--local-epochs", type=float, default=None)
    p.add_argument("--modes", default="warm,cold",
                   help="fed-client modes, run one after the other: warm (fedge's default: preloaded forkserver, "
                        "0.2 s poll while a run is active) and cold (Flower's: a new ClientApp process per "
                        "message, 3 s poll)")
    args = p.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        p.error(f"--modes: choose from {', '.join(MODES)}")
    clients = args.clients or (2 if args.quick else 3)
    rounds = args.rounds or (2 if args.quick else 3)
    epochs = args.local_epochs if args.local_epochs is not None else (1.0 if args.quick else 5.0)
    flags = ["--adapter", "film", "--no-federated-eval", "--eval-users", "0" if args.quick else "10",
             "--local-epochs", str(epochs), "--population-size", str(clients), "--round-timeout", "300"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fedge-bench-") as tmp:
        if args.quick:  # a throwaway tiny backbone, so the smoke check never pretrains for minutes
            env["FEDGE_HOME"] = str(Path(tmp) / "home")
            flags += ["--pretrain-images", "300", "--pretrain-epochs", "0.2"]
        for mode in modes:
            print(f"federation benchmark: {mode} clients ...", file=sys.stderr, flush=True)
            lines, wall = run_deployment(Path(tmp) / mode, clients, rounds, flags, env, timeout_s=3000,
                                         client_flags=MODES[mode])
            results[mode] = {"total_wall_s": round(wall, 2),
                             **summarize(lines, goal_overhead=0.20, goal_bytes=0.01)}
    out: dict[str, Any] = {
        "task": {"clients": clients, "rounds": rounds, "adapter": "film", "local_epochs": epochs,
                 "client_dp": True, "user_dp": True, "tls": True, "node_auth": True, "quick": args.quick},
        "machine_load_1min": round(os.getloadavg()[0], 2),
        "modes": {m: {k: v for k, v in r.items() if k != "headline"} for m, r in results.items()}}
    if {"warm", "cold"} <= results.keys():
        def steady_round(m: str) -> float:
            steady = results[m]["per_round"][1:] or results[m]["per_round"]
            return statistics.mean(r["train_phase_s"] for r in steady)
        out["steady_train_phase_s_cold_over_warm"] = round(steady_round("cold") / steady_round("warm"), 3)
    out["headline"] = results[modes[0]]["headline"] | {"mode": modes[0]}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
