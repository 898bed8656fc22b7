"""DP-SGD vs non-private throughput and peak memory per adapter kind and per-sample-gradient mode.

The task is fedge's default one: the default backbone (``resnet_gn_small``) on 32x32 one-channel
FLAIR-style inputs, 10 multi-label targets (BCE), and the library's default batch size
(``DPSGDConfig.batch_size``, the same as ``TrainConfig.batch_size``). ``--extra-batch-sizes`` adds rows
(default: 16, what ``fed-server`` hands clients) measured for the default modes only.

What is compared, in one process, same model, data, optimizer (SGD, momentum 0) and lr:

* ``non_private``: fedge's non-private loop (``fedge.train``): fixed batches by tensor indexing.
* each DP mode: ``fedge.privacy.train_dp_sgd`` as shipped: Poisson sampling at ``q = B / N`` (so batch
  sizes vary), per-sample clipping, noise, accounting. Throughput counts the *expected* batch ``qN``.
* ``non_private_poisson`` (diagnostic): the non-private loop on Poisson-sized batches, to separate the
  cost of variable batch shapes from the cost of privacy.

How it is timed, and why (each choice removed a bias or a noise source measured on the 2-core machine):

* **Interleaved in turns, in one thread**: the configurations of a kind run as greenlets on the main
  thread and take turns of about ``--turn-seconds`` (0.25 s of whole steps), so only one computes at a
  time. A burst of load from other processes on a shared machine lands on every configuration alike,
  instead of on whichever run happened to be going: pairing whole runs let single repetitions swing
  from 0.65 to 0.95. What was tried and dropped:
  - threads: each thread that calls torch gets its own OpenMP team, and the idle teams' spinning
    workers slowed every step by a third;
  - one process per configuration: a woken process starts with cold caches and sleeping threads,
    and identical processes differ by up to 1.5x (six non-private runs: 1,617 to 2,366 examples/s);
  - turns of one step: whichever DP mode followed a non-private one lost a fifth of its speed to the
    shared allocator (LoRA: 0.48 vs 0.63, either mode). Turns of several steps make that a first-step
    effect; with them, LoRA's inline and hooks modes (the same code for LoRA) measure the same.
* A step is timed from its start (including batch sampling) to the end of its optimizer step (for
  ``train_dp_sgd``: its ``on_step`` callback); waiting for a turn is not timed. The first two steps of
  a run (set-up, first-call kernel selection) are excluded on both sides, and a first, untimed round
  of every configuration fills oneDNN's per-shape kernel cache. The numbers are therefore the steady
  state; a fresh process (a fed-client round) also pays that set-up for each new Poisson batch size
  (see docs/privacy.md). Each repetition builds new models; ratios are paired per repetition and
  reported as median, min and max.
* Then every configuration runs once more, alone, in a fresh process (so the freed memory of other
  runs cannot hide growth). Its peak RSS growth over the RSS after imports and data, sampled every
  5 ms, is the reported peak memory (model, activations, per-sample gradients). Its throughput is the
  fresh-process regime of a fed-client round, per-shape set-up included: ``fresh_process_ratio``, a
  single un-interleaved run, so much noisier than the steady-state ratios.

    python benchmarks/dp_overhead.py [--quick] [--reps 5] [--steps 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import fields
from functools import partial
from statistics import median

import greenlet
import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedge.adapters import AdapterSpec, inject
from fedge.models import create_model
from fedge.privacy.dp_sgd import MODES, DPSGDConfig, choose_mode, train_dp_sgd
from fedge.privacy.ledger import PrivacyLedger
from fedge.train import loss_fn, minibatches

_PAGE = os.sysconf("SC_PAGE_SIZE")
DEFAULT_BATCH = next(int(f.default) for f in fields(DPSGDConfig) if f.name == "batch_size")  # type: ignore[arg-type]
WARMUP = 2
LR = 0.01


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class PeakRSS:
    """Peak RSS growth of this process over a ``with`` block, sampled every 5 ms (MiB)."""

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mib(self) -> float:
        return max(0, self.peak - self.base) / 2**20


def build(model_name: str, kind: str) -> nn.Module:
    """The default backbone with ``kind`` adapters ("film", "head", or several joined by "+")."""
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10, in_chans=1)
    return inject(model, [AdapterSpec(kind="head", num_classes=10, multilabel=True) if k == "head"
                          else AdapterSpec(kind=k) for k in kind.split("+")])


def make_data(n: int, size: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 1, size, size, generator=g), (torch.rand(n, 10, generator=g) < 0.3).float())


class StepClock:
    """Times one configuration's steps; hands the turn back to the scheduler once a turn's time is used up."""

    def __init__(self, turn_seconds: float) -> None:
        self.turn_seconds = turn_seconds
        self.durations: list[float] = []
        self._scheduler = greenlet.getcurrent().parent
        self._t0 = self._turn_start = time.perf_counter()

    def step_done(self) -> None:
        now = time.perf_counter()
        self.durations.append(now - self._t0)
        if now - self._turn_start >= self.turn_seconds:
            self._scheduler.switch()
            self._turn_start = now = time.perf_counter()
        self._t0 = now

    def throughput(self, examples_per_step: list[float]) -> float:
        """Examples per second over the steps after the warm-up."""
        timed = self.durations[WARMUP:]
        if not timed:
            raise RuntimeError(f"no timed steps (ran {len(self.durations)})")
        return sum(examples_per_step[WARMUP:len(self.durations)]) / sum(timed)


def non_private(model: nn.Module, data: TensorDataset, batch: int, steps: int, clock: StepClock,
                poisson: bool = False) -> float:
    """fedge.train's loop (tensor-indexed batches) with SGD; examples/s after the warm-up steps."""
    x_all, y_all = data.tensors
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    rng = np.random.default_rng(0)
    n = len(x_all)
    if poisson:
        batches = [np.flatnonzero(rng.random(n) < batch / n) for _ in range(steps + WARMUP)]
    else:
        batches = list(minibatches(n, batch, (steps + WARMUP) * batch / n, rng))
    model.train()
    for idx in batches:
        x, y = x_all[idx], y_all[idx]
        loss = loss_fn(model(x), y, multilabel=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        clock.step_done()
    return clock.throughput([float(len(idx)) for idx in batches])


def private(model: nn.Module, data: TensorDataset, batch: int, steps: int, mode: str, ledger: PrivacyLedger,
            clock: StepClock) -> float:
    """fedge.privacy.train_dp_sgd; expected examples/s (q * N per step) after the warm-up steps."""
    cfg = DPSGDConfig(batch_size=batch, steps=steps + WARMUP, lr=LR, noise_multiplier=1.0, grad_sample_mode=mode)
    result = train_dp_sgd(
        model, data, ledger=ledger, run="bench", round=0, subject=f"{mode}-{batch}-{id(model)}", config=cfg,
        seed=0, loss_fn=nn.BCEWithLogitsLoss(), on_step=lambda _i, _loss: clock.step_done(),
    )
    return clock.throughput([result.sample_rate * len(data)] * result.steps)


def run_one(name: str, kind: str, batch: int, args: argparse.Namespace, data: TensorDataset,
            ledger: PrivacyLedger) -> float:
    """One run of one configuration on a new model; its throughput."""
    model = build(args.model, kind)
    clock = StepClock(args.turn_seconds)
    if name.startswith("non_private"):
        return non_private(model, data, batch, args.steps, clock, poisson=name == "non_private_poisson")
    return private(model, data, batch, args.steps, name, ledger, clock)


def fresh_run(name: str, kind: str, batch: int, model: str, threads: int, steps: int, dataset_size: int,
              image_size: int) -> tuple[float, float]:
    """(throughput, peak RSS growth in MiB) of one run alone; call it in a fresh process."""
    torch.set_num_threads(threads)
    args = argparse.Namespace(model=model, steps=steps, turn_seconds=math.inf)
    data = make_data(dataset_size, image_size)
    with tempfile.TemporaryDirectory() as tmp, PrivacyLedger(f"{tmp}/ledger.db") as ledger:
        ledger.open_run("bench", epsilon=float("inf"), delta=1e-5)
        with PeakRSS() as rss:
            throughput = run_one(name, kind, batch, args, data, ledger)
    return throughput, rss.mib


def interleaved(runs: dict[str, Callable[[], float]]) -> tuple[dict[str, float], dict[str, str]]:
    """Run the configurations as greenlets, in turns, until all finish; returns throughputs and errors."""
    results: dict[str, float] = {}
    errors: dict[str, str] = {}

    def run(name: str) -> None:
        try:
            results[name] = runs[name]()
        except Exception as err:  # a mode Opacus cannot run for this layer type is a result too
            errors[name] = f"{type(err).__name__}: {err}"[:200]

    active = {name: greenlet.greenlet(partial(run, name)) for name in runs}
    while active:
        for name, g in list(active.items()):
            g.switch()  # returns when this configuration's turn is over, or when it has finished
            if g.dead:
                del active[name]
    return results, errors


def summarise(runs: dict[str, list[float]], fresh: dict[str, tuple[float, float]],
              errors: dict[str, str]) -> dict[str, object]:
    if "non_private" in errors:
        raise RuntimeError(f"the non-private baseline failed: {errors['non_private']}")
    base, (fresh_base, base_peak) = runs["non_private"], fresh["non_private"]
    row: dict[str, object] = {
        "non_private_ex_per_s": round(median(base), 1),
        "non_private_ex_per_s_per_rep": [round(t, 1) for t in base],
        "non_private_peak_mib": round(base_peak, 1),
        "non_private_fresh_process_ex_per_s": round(fresh_base, 1),
    }
    for name, values in runs.items():
        if name == "non_private":
            continue
        if name in errors:
            row[name] = {"error": errors[name]}
            continue
        ratios = [tp / b for tp, b in zip(values, base)]
        row[name] = {
            "ex_per_s": round(median(values), 1),
            "ratio_median": round(median(ratios), 3),  # paired per repetition
            "ratio_min": round(min(ratios), 3),
            "ratio_max": round(max(ratios), 3),
            "ratio_per_rep": [round(r, 3) for r in ratios],
            "peak_mib": round(fresh[name][1], 1),
            # one run alone in a new process (a fed-client round): includes per-shape kernel set-up; one sample
            "fresh_process_ratio": round(fresh[name][0] / fresh_base, 3),
        }
    dp = {m: v["ratio_median"] for m, v in row.items() if m in MODES and isinstance(v, dict) and "ratio_median" in v}
    row["fastest_mode"] = max(dp, key=dp.get) if dp else None  # type: ignore[arg-type]
    return row


def measure(args: argparse.Namespace, kind: str, batch: int, modes: list[str], reps: int,
            ledger: PrivacyLedger) -> dict[str, object]:
    """A discarded warm-up round, then ``reps`` interleaved runs of every configuration of one adapter kind."""
    names = ["non_private", "non_private_poisson", *modes]
    runs: dict[str, list[float]] = {name: [] for name in names}
    errors: dict[str, str] = {}
    for rep in range(-1, reps):
        order = [n for n in (names if rep % 2 == 0 else names[::-1]) if n not in errors]
        done, failed = interleaved({n: partial(run_one, n, kind, batch, args, args.data, ledger) for n in order})
        errors.update(failed)
        if rep < 0:
            continue
        for name, throughput in done.items():
            runs[name].append(throughput)
        progress(f"{kind} batch {batch} rep {rep + 1}/{reps}: " + ", ".join(
            f"{n} {done[n] / done['non_private']:.2f}" if n in done and "non_private" in done else f"{n} failed"
            for n in order))
    spawn = mp.get_context("spawn")  # a fresh heap each, so that earlier runs' freed memory does not hide growth
    fresh = {}
    for name in names:
        if name not in errors:
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                fresh[name] = pool.submit(fresh_run, name, kind, batch, args.model, args.threads, args.steps,
                                          args.dataset_size, args.image_size).result()
    return summarise(runs, fresh, errors)


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="few steps and one repetition (< 1 minute)")
    parser.add_argument("--model", default="resnet_gn_small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kinds", default="film,film+head,lora,head", help="adapter kinds, comma-separated")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 5; 1 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default 30; 3 with --quick)")
    parser.add_argument("--turn-seconds", type=float, default=0.25, help="compute time per turn (whole steps)")
    parser.add_argument("--extra-batch-sizes", default="16", help="comma-separated; default modes only ('' for none)")
    args = parser.parse_args()
    args.steps = args.steps or (3 if args.quick else 30)
    args.dataset_size, args.image_size = (256 if args.quick else 1024), 32
    reps = args.reps or (1 if args.quick else 5)
    kinds = args.kinds.split(",")
    default_modes = {k: choose_mode(build(args.model, k)) for k in kinds}
    load_before, t0 = os.getloadavg(), time.time()
    torch.set_num_threads(args.threads)
    # train_dp_sgd silences this warning inside warnings.catch_warnings(); interleaved runs enter and leave
    # those contexts out of order, which would restore filters without it.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    args.data = make_data(args.dataset_size, args.image_size)
    with tempfile.TemporaryDirectory() as tmp, PrivacyLedger(f"{tmp}/ledger.db") as ledger:
        ledger.open_run("bench", epsilon=float("inf"), delta=1e-5)
        results = {kind: measure(args, kind, DEFAULT_BATCH, list(MODES), reps, ledger) for kind in kinds}
        extra: dict[str, object] = {}
        for b in (int(s) for s in args.extra_batch_sizes.split(",") if s):
            extra[str(b)] = {kind: measure(args, kind, b, sorted(set(default_modes.values())), reps, ledger)
                             for kind in kinds}
    film = results.get("film", {}).get(default_modes.get("film", ""), {})
    value = film.get("ratio_median", 0.0) if isinstance(film, dict) else 0.0
    out = {
        "model": args.model,
        "image_size": args.image_size,
        "dataset_size": args.dataset_size,
        "batch_size": DEFAULT_BATCH,
        "timed_steps": args.steps,
        "warmup_steps": WARMUP,
        "repetitions": reps,
        "threads": args.threads,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "seconds": round(time.time() - t0, 1),
        "quick": args.quick,
        "default_modes": default_modes,
        "results": results,
        "extra_batch_sizes": extra,
        "headline": {
            "metric": "film_dp_over_nonprivate_throughput (default mode, default batch, median of paired reps)",
            "value": value,
            "min": film.get("ratio_min") if isinstance(film, dict) else None,
            "max": film.get("ratio_max") if isinstance(film, dict) else None,
            "goal": 0.8,
            "higher_is_better": True,
            "met": bool(value >= 0.8),
        },
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
