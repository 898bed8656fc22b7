"""Run one simulated federation into a run directory: config, metrics, held-out evaluation, summary, plots.

Run directory (the server's state dir, see :mod:`fedge.server.checkpoint`, plus the simulation's files)::

    sim-config.json        resolved SimConfig (with the calibrated user-level noise)
    config.json ... metrics.jsonl, privacy-ledger.sqlite, adapters/   written by fedge's ServerApp
    test-metrics.jsonl     macro/micro AP of saved global adapters on held-out test users
    summary.json           the run in one object
    plots/ap.png, plots/epsilon.png

Running again on the same run directory resumes from the last completed round (the ServerApp's resume).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedge.data.source import DataSource
from fedge.errors import ConfigError
from fedge.server.checkpoint import RunStore
from fedge.simulations.config import SimConfig, resolve
from fedge.simulations.data import DataSpec, describe, pooled, population_size

log = logging.getLogger("fedge.simulations")


def data_spec(cfg: SimConfig, run_dir: Path) -> DataSpec:
    fed = cfg.federation
    source = DataSource(cfg.dataset, cfg.num_users, cfg.data_seed, cfg.flair_path, fed.image_size, fed.public_users)
    return DataSpec(source, label_set=fed.label_set, run_dir=str(run_dir.resolve()))


def prepare(cfg: SimConfig, run_dir: str | Path) -> tuple[SimConfig, DataSpec, int]:
    """Resolve the config for this population and check it against a run directory's earlier config."""
    run_dir = Path(run_dir)
    spec = data_spec(cfg, run_dir)
    population = population_size(spec)
    cfg = resolve(cfg, population)
    saved = run_dir / "sim-config.json"
    if saved.is_file():
        old = json.loads(saved.read_text())
        new = json.loads(json.dumps(cfg.to_dict(), default=str))
        diff = config_diff(old, new)
        if diff:
            raise ConfigError(f"{run_dir} holds a run with a different config ({', '.join(diff)}); "
                              f"pass another --run-dir, or --fresh to start it over")
    return cfg, spec, population


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Settings that differ between a saved and a new resolved config; a setting the saved config predates
    counts as equal when the new one holds its default (runs made before it existed resume)."""
    defaults = json.loads(json.dumps(SimConfig().to_dict(), default=str))
    out = []
    for k in sorted(set(old) | set(new)):
        if isinstance(old.get(k), dict) and isinstance(new.get(k), dict):
            sub = {n: v for n, v in new[k].items() if n in old[k] or v != defaults.get(k, {}).get(n)}
            out += [f"{k}.{n}" for n in sorted(set(old[k]) | set(sub)) if old[k].get(n) != sub.get(n)]
        elif old.get(k) != new.get(k) and (k in old or new.get(k) != defaults.get(k)):
            out.append(k)
    return out


def _rounds(store: RunStore) -> list[dict[str, Any]]:
    return [r for r in store.read_metrics() if "round" in r and not r.get("event") and r["round"] > 0]


def _progress_thread(store: RunStore, total: int, stop: threading.Event, enabled: bool) -> threading.Thread:
    """A tqdm bar over rounds, fed by the metrics lines the ServerApp commits."""

    def watch() -> None:
        if not enabled or os.environ.get("FEDGE_NO_PROGRESS") == "1":
            return
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="rounds", dynamic_ncols=True, initial=len(_rounds(store)))
        while not stop.wait(1.0):
            done = _rounds(store)
            if len(done) > bar.n:
                last = done[-1]
                evaluated = [m for m in done if "server_macro_ap" in m]  # evaluation runs every eval_every rounds
                ap = f"val macro-AP {evaluated[-1]['server_macro_ap']:.3f} (round {evaluated[-1]['round']}) " \
                    if evaluated else ""
                bar.set_postfix_str(f"{ap}eps {last.get('user_eps', math.inf):.2f}")
                bar.update(len(done) - bar.n)
        bar.close()

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    return th


def evaluate_rounds(cfg: SimConfig, spec: DataSpec, store: RunStore) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Zero-adaptation baseline and the test AP of every ``eval_every``-th saved global state (cached)."""
    from fedge.adapters import AdapterState, load_adapter_state
    from fedge.server.task import adapted_model, load_backbone, task_for
    from fedge.train import evaluate

    fed = cfg.federation
    test = pooled(spec, "test", cfg.test_users) if cfg.test_users > 0 else None
    if test is None:
        return {}, []
    task = task_for(fed)
    labels = test.labels[fed.label_set]
    cache = store.dir / "test-metrics.jsonl"
    done = {r["round"]: r for r in map(json.loads, cache.read_text().splitlines())} if cache.is_file() else {}
    if -1 not in done:
        # the no-adaptation baseline needs a backbone whose own classifier was trained on this label set
        backbone = load_backbone(task.pretrain)
        fits = task.classifier_fits and labels.shape[1] == task.num_classes
        base = evaluate(backbone, test.images, labels, multilabel=True) if fits else {}
        done[-1] = {"round": -1, "baseline": True, **base}
    wanted = sorted({r for r in range(0, fed.rounds + 1) if r % max(1, cfg.eval_every) == 0} | {fed.rounds})
    model = None
    for r in wanted:
        path = store.adapters_path(r)
        if r in done or not path.is_file():
            continue
        state = AdapterState.load(path)
        if model is None:
            model = adapted_model(task.pretrain, state.specs, state)
        load_adapter_state(model, state)
        done[r] = {"round": r, **evaluate(model, test.images, labels, multilabel=True)}
    cache.write_text("".join(json.dumps(done[r], sort_keys=True) + "\n" for r in sorted(done)))
    base = {k: v for k, v in done[-1].items() if k in ("macro_ap", "micro_ap")}
    return base, [done[r] for r in sorted(done) if r >= 0]


def summarize(cfg: SimConfig, spec: DataSpec, store: RunStore, population: int, wall_s: float) -> dict[str, Any]:
    """summary.json: the resolved setting, final/best test AP vs the baseline, epsilon, speed."""
    from fedge.privacy.ledger import PrivacyLedger
    from fedge.server import dp
    from fedge.server.task import task_for

    fed = cfg.federation
    rounds = _rounds(store)
    baseline, test = evaluate_rounds(cfg, spec, store)
    with PrivacyLedger(store.ledger_path) as ledger:
        ledger.open_run(dp.RUN, epsilon=math.inf, delta=fed.user_delta, unit="user")
        eps = dp.user_epsilon(ledger) if fed.user_dp and fed.user_noise_multiplier > 0 else math.inf
    final = test[-1] if test and test[-1]["round"] == fed.rounds else {}
    clients = sum(r.get("clients", 0) for r in rounds)
    train_s = sum(r.get("train_phase_s", 0.0) for r in rounds)
    return {
        "name": cfg.name, "dataset": cfg.dataset, "backend": cfg.backend, "adapter": fed.adapter,
        "label_set": fed.label_set, "num_classes": task_for(fed).num_classes, "population": population, "data": describe(spec),
        "cohort_size": fed.cohort_size, "rounds_done": len(rounds), "rounds": fed.rounds,
        "user_dp": fed.user_dp, "user_noise_multiplier": fed.user_noise_multiplier, "user_clip": fed.user_clip,
        "user_delta": fed.user_delta, "user_epsilon_target": cfg.user_epsilon, "user_epsilon": eps,
        "client_dp": fed.client_dp, "client_eps_max": max((r.get("client_eps_max", 0.0) for r in rounds), default=0.0),
        "baseline_test": baseline, "final_test": {k: final[k] for k in ("macro_ap", "micro_ap") if k in final},
        "best_test_macro_ap": max((t["macro_ap"] for t in test), default=math.nan),
        "improves_over_baseline": bool(final and baseline and final["macro_ap"] > baseline["macro_ap"]),
        "final_val": {k.removeprefix("server_"): rounds[-1][k] for k in ("server_macro_ap", "server_micro_ap")
                      if rounds and k in rounds[-1]},
        "test_users": cfg.test_users, "wall_s": wall_s, "clients_trained": clients,
        "clients_per_s_train_phase": clients / train_s if train_s > 0 else math.nan,
        "round_s_mean": sum(r.get("round_s", 0.0) for r in rounds) / max(1, len(rounds)),
    }


def run(cfg: SimConfig, run_dir: str | Path, progress: bool = True, fresh: bool = False) -> dict[str, Any]:
    """Run (or resume) ``cfg`` in ``run_dir``; returns the summary (also written to ``summary.json``)."""
    import shutil

    from fedge.server.task import load_backbone, task_for
    from fedge.simulations import engine
    from fedge.simulations.plots import plot_run

    run_dir = Path(run_dir)
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    cfg, spec, population = prepare(cfg, run_dir)
    fed = cfg.federation
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "sim-config.json")
    store = RunStore(run_dir)
    # The backbone is pretrained (or loaded) once here, before any worker could race to pretrain it.
    load_backbone(task_for(fed).pretrain, progress=progress)
    run_config = {**fed.to_run_config(), "state-dir": str(run_dir.resolve())}
    for name in ("fedge.server", "flwr"):
        logging.getLogger(name).setLevel(logging.WARNING)
    stop = threading.Event()
    watcher = _progress_thread(store, fed.rounds, stop, progress)
    t0 = time.perf_counter()
    try:
        if cfg.backend == "ray":
            engine.run_ray(run_config, spec, population, cfg.num_cpus, cfg.client_cpus, cfg.object_store_mb,
                           cfg.targeted_polling)
        else:
            engine.run_inprocess(run_config, spec, population)
    finally:
        stop.set()
        watcher.join(timeout=5)
    wall = time.perf_counter() - t0
    summary = summarize(cfg, spec, store, population, wall)
    if summary["rounds_done"] < fed.rounds:
        raise ConfigError(f"the simulation stopped after {summary['rounds_done']} of {fed.rounds} rounds; "
                          f"see the log above, then run the same command again to resume")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    title = (f"{cfg.name}: {fed.adapter}, {population} users, cohort {fed.cohort_size}, "
             f"user eps {summary['user_epsilon']:.3g}")
    rounds = _rounds(store)
    _, test = evaluate_rounds(cfg, spec, store)
    plot_run(rounds, test, summary["baseline_test"], run_dir / "plots", title)
    return summary


def with_overrides(cfg: SimConfig, **fed: Any) -> SimConfig:
    """A copy with federation fields replaced (``None`` values are ignored)."""
    return replace(cfg, federation=cfg.federation.with_overrides(**fed))
