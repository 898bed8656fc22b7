"""Simulation speed at scale: 10,000 FLAIR-style training users, cohorts of 100, vs a pure-compute floor.

Three ways to do the same client updates (same users per round, same seeds), measured in one run:

* ``floor``: one Python loop: generate the user's data, ``fedge.client.local.local_update`` -- no messages,
  no server, no framework (the global state is aggregated with the same strategy between rounds);
* ``inprocess``: fedge's ServerApp main + round loop + strategy + DP-FedAvg, clients answered in-process;
* ``ray``: the same on Flower's Simulation Engine (Ray backend, 2 CPUs, one actor per CPU).

Ratios compare the rounds' wall time (``round_s`` from the server's metrics: send, train, validate,
aggregate, account) with the floor's; one-off start-up (Ray, backbone load) is reported separately.
Peak memory is the summed RSS of this process and all its descendants (Ray's raylet and workers) while the
10,000-user population is simulated. Prints one JSON object; the last key is ``headline``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any


def _tree_rss_mb(root: int) -> float:
    """Summed RSS (MiB) of ``root`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/statm") as f:
                rss[int(d)] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total / 2**20


class PeakRSS:
    """Samples the process tree's RSS every 0.2 s between ``start`` and ``stop``."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._th: threading.Thread | None = None

    def __enter__(self) -> PeakRSS:
        def loop() -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, _tree_rss_mb(os.getpid()))
                self._stop.wait(0.2)

        self._th = threading.Thread(target=loop, daemon=True)
        self._th.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._th:
            self._th.join()


def _config(args: argparse.Namespace, backend: str, targeted: bool = True) -> Any:
    from fedge.simulations.config import load_config

    return load_config("flair-style", {
        "simulation.backend": backend, "simulation.targeted_polling": targeted, "simulation.num_users": args.users, "simulation.test_users": 0,
        "simulation.user_epsilon": 8.0, "federation.rounds": args.rounds, "federation.cohort_size": args.cohort,
        "federation.min_clients": 1, "federation.adapter": args.adapter, "federation.eval_users": 1,
        "federation.eval_every": 0, "federation.local_epochs": 1.0,
    })


def floor(args: argparse.Namespace, population: int, tmp: Path) -> dict[str, Any]:
    """The same rounds as a plain loop: the server's cohorts (same RNG), data generation + local update.

    Only the client work is timed; the global state is then aggregated with the same strategy.
    """
    from fedge.client.local import local_update
    from fedge.server import dp
    from fedge.server.evaluation import ServerEvaluator
    from fedge.server.strategy import AdapterDeltaStrategy
    from fedge.simulations.config import resolve
    from fedge.simulations.data import load_user, train_user_id
    from fedge.simulations.engine import NODE_BASE
    from fedge.simulations.runner import data_spec

    cfg = resolve(_config(args, "inprocess"), population)
    fed = cfg.federation
    spec = data_spec(cfg, Path("."))
    strategy = AdapterDeltaStrategy(fed)
    state = ServerEvaluator(fed).initial_state()
    rng = random.Random(fed.seed * 7919)  # what fedge.server.loop seeds a fresh run with
    nodes = [NODE_BASE + i for i in range(population)]
    from fedge.server.protocol import ClientUpdate

    ledger = dp.open_ledger(tmp / "floor-ledger.sqlite", 0.0, fed.user_delta)
    warm = load_user(spec, train_user_id(spec, 0))  # one-off loads (image pools, backbone) are not timed
    local_update(state, {**strategy.train_hparams(0), "round": 0}, warm)
    per_round = []
    for r in range(1, fed.rounds + 1):
        t0 = time.perf_counter()
        cohort = sorted(rng.sample(nodes, fed.cohort_size))
        hp = {**strategy.train_hparams(r), "round": r}
        updates = []
        for n in cohort:
            data = load_user(spec, train_user_id(spec, n - NODE_BASE))
            delta, m = local_update(state, hp, data)
            updates.append(ClientUpdate(n, delta, state.backbone_hash, int(m["num-examples"]), 0, m))
        per_round.append(time.perf_counter() - t0)
        state = strategy.aggregate(state, updates, r, ledger).state
    ledger.close()
    return {"round_s": per_round, "rounds_s": sum(per_round)}


def simulate(args: argparse.Namespace, backend: str, out: Path, targeted: bool = True) -> dict[str, Any]:
    from fedge.simulations.runner import run

    t0 = time.perf_counter()
    name = backend if targeted else f"{backend}-flower-polling"
    with PeakRSS() as mem:
        s = run(_config(args, backend, targeted), out / name, progress=False)
    lines = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in lines if r.get("round", 0) > 0 and not r.get("event")]
    return {"round_s": [r["round_s"] for r in rounds], "rounds_s": sum(r["round_s"] for r in rounds),
            "wall_s": time.perf_counter() - t0, "peak_rss_mb": round(mem.peak, 1),
            "clients": sum(r["clients"] for r in rounds), "user_epsilon": s["user_epsilon"],
            "client_compute_mean_s": sum(r["client_compute_mean_s"] for r in rounds) / max(1, len(rounds))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 round, cohort 10 (under a minute on an idle machine)")
    p.add_argument("--users", type=int, default=12_500, help="FLAIR-style users (80%% train: 10,000)")
    p.add_argument("--rounds", type=int, default=3, help="round 1 includes Ray's actor start; ratios use rounds 2+")
    p.add_argument("--cohort", type=int, default=100)
    p.add_argument("--adapter", default="film")
    p.add_argument("--backends", default="ray,inprocess,ray-flower-polling",
                   help="ray-flower-polling: Flower's own message polling (without fed-sim's targeted polling)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.cohort, args.backends = 2, 10, "ray,inprocess"
    os.environ.setdefault("FEDGE_NO_PROGRESS", "1")
    import torch

    torch.set_num_threads(1)  # every backend computes one client per core; the floor is one core's loop
    from fedge.simulations.data import population_size
    from fedge.simulations.runner import data_spec

    population = population_size(data_spec(_config(args, "inprocess"), Path(".")))
    result: dict[str, Any] = {"population_train_users": population, "cohort": args.cohort, "rounds": args.rounds,
                              "adapter": args.adapter, "cpus": os.cpu_count(),
                              "load_avg_1min_start": os.getloadavg()[0]}
    with TemporaryDirectory() as tmp:
        with PeakRSS() as mem:
            result["floor"] = floor(args, population, Path(tmp))
        result["floor"]["peak_rss_mb"] = round(mem.peak, 1)
        for b in [b for b in args.backends.split(",") if b]:
            result[b] = simulate(args, b.removesuffix("-flower-polling"), Path(tmp), not b.endswith("polling"))
    fl = result["floor"]["round_s"]
    result["floor"]["clients_per_s"] = args.cohort * len(fl) / sum(fl)
    steady = slice(1, None) if args.rounds > 1 else slice(0, None)
    for b in ("inprocess", "ray", "ray-flower-polling"):
        if b in result:
            rs = result[b]["round_s"]
            result[b]["clients_per_s"] = result[b]["clients"] / sum(rs)
            result[b]["ratio_vs_floor_all_rounds"] = sum(rs) / sum(fl)
            result[b]["ratio_vs_floor"] = sum(rs[steady]) / sum(fl[steady])
            result[b]["ratio_vs_floor_per_cpu"] = sum(rs[steady]) / (sum(fl[steady]) / 2)
    result["load_avg_1min_end"] = os.getloadavg()[0]
    main_b = "ray" if "ray" in result else "inprocess"
    ratio = result[main_b]["ratio_vs_floor"]
    result["headline"] = {"metric": f"{main_b} simulation round wall time / one-process pure-compute floor, rounds "
                                    f"2+ ({population} users, cohort {args.cohort})",
                          "value": round(ratio, 3), "goal": 1.3, "higher_is_better": False, "met": ratio <= 1.3}
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
