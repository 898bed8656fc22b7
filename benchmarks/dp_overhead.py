"""DP-SGD vs non-private throughput and peak memory per adapter kind and per-sample-gradient mode.

The task is fedge's default one: the default backbone (``resnet_gn_small``) on 32x32 one-channel
FLAIR-style inputs, 10 multi-label targets (BCE), and the library's default batch size
(``DPSGDConfig.batch_size``, the same as ``TrainConfig.batch_size``). ``--extra-batch-sizes`` adds rows
(default: 16, what ``fed-server`` hands clients) measured for the default mode only.

What is compared, side by side in one process, same model, data, optimizer (SGD, momentum 0) and lr:

* ``non_private``: fedge's non-private loop (``fedge.train``): fixed batches by tensor indexing.
* each DP mode: ``fedge.privacy.train_dp_sgd`` as shipped: Poisson sampling at ``q = B / N`` (so batch
  sizes vary), per-sample clipping, noise, accounting. Throughput counts the *expected* batch ``qN``.
* ``non_private_poisson`` (diagnostic): the non-private loop on Poisson-sized batches, to separate the
  cost of variable batch shapes from the cost of privacy.

Every run times the steps after two warm-up steps (set-up, first-call kernel selection excluded on both
sides). Runs are interleaved (each repetition runs every configuration once, alternating the order), so
load from other processes hits both sides alike; ratios are paired per repetition and reported as
median, min and max. Peak memory is the peak RSS growth over a run, sampled every 5 ms.

    python benchmarks/dp_overhead.py [--quick] [--reps 5] [--steps 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import fields
from functools import partial
from statistics import median

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


def peak_rss_growth(fn: Callable[[], float]) -> tuple[float, float]:
    """Run ``fn`` (returning throughput) while sampling RSS; returns (throughput, peak growth in MiB)."""
    base, peak, stop = _rss(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        value = fn()
    finally:
        stop.set()
        t.join()
    return value, max(0, peak[0] - base) / 2**20


def build(model_name: str, kind: str) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10, in_chans=1)
    specs = [AdapterSpec(kind="head", num_classes=10, multilabel=True)] if kind == "head" else [AdapterSpec(kind=kind)]
    return inject(model, specs)


def non_private(model: nn.Module, data: TensorDataset, batch: int, steps: int, poisson: bool = False) -> float:
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
    seen, t0 = 0, 0.0
    for i, idx in enumerate(batches):
        if i == WARMUP:
            t0 = time.perf_counter()
        x, y = x_all[idx], y_all[idx]
        loss = loss_fn(model(x), y, multilabel=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= WARMUP:
            seen += len(idx)
    return seen / (time.perf_counter() - t0)


def private(model: nn.Module, data: TensorDataset, batch: int, steps: int, mode: str, ledger: PrivacyLedger) -> float:
    """fedge.privacy.train_dp_sgd; expected examples/s (q * N per step) after the warm-up steps."""
    marks: list[float] = []
    cfg = DPSGDConfig(batch_size=batch, steps=steps + WARMUP, lr=LR, noise_multiplier=1.0, grad_sample_mode=mode)
    result = train_dp_sgd(
        model, data, ledger=ledger, run="bench", round=0, subject=f"{mode}-{batch}-{id(model)}", config=cfg, seed=0,
        loss_fn=nn.BCEWithLogitsLoss(), on_step=lambda i, _loss: marks.append(time.perf_counter()),
    )
    expected = result.sample_rate * len(data)
    return expected * (len(marks) - WARMUP) / (marks[-1] - marks[WARMUP - 1])


def summarise(runs: dict[str, list[tuple[float, float]]], errors: dict[str, str]) -> dict[str, object]:
    base = runs["non_private"]
    row: dict[str, object] = {
        "non_private_ex_per_s": round(median(t for t, _ in base), 1),
        "non_private_ex_per_s_per_rep": [round(t, 1) for t, _ in base],
        "non_private_peak_mib": round(max(m for _, m in base), 1),
    }
    for name, values in runs.items():
        if name == "non_private":
            continue
        if name in errors:
            row[name] = {"error": errors[name]}
            continue
        ratios = [tp / b for (tp, _), (b, _) in zip(values, base)]
        row[name] = {
            "ex_per_s": round(median(t for t, _ in values), 1),
            "ratio_median": round(median(ratios), 3),  # paired per repetition
            "ratio_min": round(min(ratios), 3),
            "ratio_max": round(max(ratios), 3),
            "ratio_per_rep": [round(r, 3) for r in ratios],
            "peak_mib": round(max(m for _, m in values), 1),
        }
    dp = {m: v["ratio_median"] for m, v in row.items() if m in MODES and isinstance(v, dict) and "ratio_median" in v}
    row["fastest_mode"] = max(dp, key=dp.get) if dp else None  # type: ignore[arg-type]
    return row


def measure(args: argparse.Namespace, data: TensorDataset, batch: int, modes: list[str], ledger: PrivacyLedger,
            reps: int) -> dict[str, dict[str, object]]:
    """Every kind and mode once per repetition, interleaved; the order flips every repetition."""
    kinds = args.kinds.split(",")
    runs = {k: {"non_private": [], "non_private_poisson": [], **{m: [] for m in modes}} for k in kinds}
    errors: dict[str, dict[str, str]] = {k: {} for k in kinds}
    for rep in range(reps):
        for kind in kinds:
            names = ["non_private", "non_private_poisson", *modes]
            for name in names if rep % 2 == 0 else names[::-1]:
                if name in errors[kind]:
                    continue
                model = build(args.model, kind)
                if name.startswith("non_private"):
                    fn = partial(non_private, model, data, batch, args.steps, name == "non_private_poisson")
                else:
                    fn = partial(private, model, data, batch, args.steps, name, ledger)
                try:
                    runs[kind][name].append(peak_rss_growth(fn))
                except Exception as err:  # a mode Opacus cannot run for this layer type is a result too
                    errors[kind][name] = f"{type(err).__name__}: {err}"[:200]
    return {kind: summarise(runs[kind], errors[kind]) for kind in kinds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="few steps and one repetition (< 1 minute)")
    parser.add_argument("--model", default="resnet_gn_small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kinds", default="film,lora,head")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 5; 1 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default 20; 3 with --quick)")
    parser.add_argument("--extra-batch-sizes", default="16", help="comma-separated; default mode only ('' for none)")
    args = parser.parse_args()
    args.steps = args.steps or (3 if args.quick else 20)
    reps = args.reps or (1 if args.quick else 5)
    torch.set_num_threads(args.threads)
    n, size = (256 if args.quick else 1024), 32
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 1, size, size, generator=g), (torch.rand(n, 10, generator=g) < 0.3).float())
    default_modes = {k: choose_mode(build(args.model, k)) for k in args.kinds.split(",")}
    load_before, t0 = os.getloadavg(), time.time()
    with tempfile.TemporaryDirectory() as tmp, PrivacyLedger(f"{tmp}/ledger.db") as ledger:
        ledger.open_run("bench", epsilon=float("inf"), delta=1e-5)
        results = measure(args, data, DEFAULT_BATCH, list(MODES), ledger, reps)
        extra: dict[str, object] = {}
        for b in (int(s) for s in args.extra_batch_sizes.split(",") if s):
            extra[str(b)] = measure(args, data, b, sorted(set(default_modes.values())), ledger, reps)
    film = results.get("film", {}).get(default_modes.get("film", ""), {})
    value = film.get("ratio_median", 0.0) if isinstance(film, dict) else 0.0
    out = {
        "model": args.model,
        "image_size": size,
        "dataset_size": n,
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
