"""Side-by-side measurement of PyTorch eager, ORT fp32 and ORT int8: latency, throughput, size, accuracy."""

from __future__ import annotations

import functools
import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedge.edge.export import ort_session, run_onnx, run_torch
from fedge.edge.manifest import read_manifest
from fedge.edge.pipeline import task_score


def _timings(fn: Callable[[], object], warmup: int, iters: int) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out


def measure_interleaved(fns: dict[str, Callable[[np.ndarray], object]], x: np.ndarray, iters: int,
                        batch: int = 32, rounds: int = 10) -> dict[str, dict[str, float]]:
    """p50/p95 latency (ms) at batch 1 and throughput (images/s, median) at ``batch`` for each runtime.

    The runtimes take turns in ``rounds`` short blocks, so load from other processes on a shared machine
    falls on all of them alike instead of biasing whichever ran during a busy spell.
    """
    one, many = x[:1], x[:batch]
    t1: dict[str, list[np.ndarray]] = {k: [] for k in fns}
    tb: dict[str, list[np.ndarray]] = {k: [] for k in fns}
    per_round, per_round_b = max(1, iters // rounds), max(1, iters // (10 * rounds))
    for _ in range(rounds):
        for name, fn in fns.items():
            t1[name].append(_timings(functools.partial(fn, one), 5, per_round))
            tb[name].append(_timings(functools.partial(fn, many), 1, per_round_b))
    out = {}
    for name in fns:
        a, b = np.concatenate(t1[name]), np.concatenate(tb[name])
        out[name] = {"p50_ms": 1e3 * float(np.percentile(a, 50)), "p95_ms": 1e3 * float(np.percentile(a, 95)),
                     f"throughput_b{batch}_ips": batch / float(np.median(b))}
    return out


def _run_session(sess: Any, input_name: str, a: np.ndarray) -> object:
    return sess.run(None, {input_name: a})


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict as torch.save writes it (what a PyTorch app would ship)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def bench_bundle(
    bundle: str | Path,
    test: tuple[np.ndarray, np.ndarray],
    eager: nn.Module | None = None,
    iters: int = 300,
    threads: int = 1,
) -> dict[str, Any]:
    """Measure every runtime available for ``bundle`` in one run, on the same inputs and thread count."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    x = np.ascontiguousarray(test[0], dtype=np.float32)
    multilabel = bool(manifest["multilabel"])
    rows: dict[str, dict[str, Any]] = {}
    fns: dict[str, Callable[[np.ndarray], object]] = {}
    if eager is not None:
        torch.set_num_threads(threads)
        eager = eager.eval()

        @torch.no_grad()
        def run_eager(a: np.ndarray) -> object:
            return eager(torch.from_numpy(a))

        metric, score = task_score(run_torch(eager, x), test[1], multilabel)
        rows["pytorch_eager"] = {"bytes": model_bytes(eager), metric: score}
        fns["pytorch_eager"] = run_eager
    in_name = manifest["input"]["name"]
    for name, variant in (("ort_fp32", "fp32"), ("ort_int8", "int8")):
        if variant not in manifest["files"]:
            continue
        sess = ort_session(bundle / manifest["files"][variant]["path"], threads=threads)
        metric, score = task_score(run_onnx(sess, x), test[1], multilabel)
        rows[name] = {"bytes": manifest["files"][variant]["bytes"], metric: score}
        fns[name] = functools.partial(_run_session, sess, in_name)
    for name, timing in measure_interleaved(fns, x, iters).items():
        rows[name] = {**timing, **rows[name]}
    return {"threads": threads, "iters": iters, "test_examples": int(len(x)), "metric": metric, "rows": rows}


def ratios(result: dict[str, Any]) -> dict[str, float]:
    """The goal ratios: int8/fp32 size and latency, fp32/eager latency."""
    rows = result["rows"]
    out: dict[str, float] = {}
    if "ort_int8" in rows and "ort_fp32" in rows:
        f, q = rows["ort_fp32"], rows["ort_int8"]
        out["int8_over_fp32_bytes"] = q["bytes"] / f["bytes"]
        out["int8_over_fp32_p50_b1"] = q["p50_ms"] / f["p50_ms"]
        out["int8_over_fp32_time_b32"] = f["throughput_b32_ips"] / q["throughput_b32_ips"]
    if "pytorch_eager" in rows and "ort_fp32" in rows:
        out["fp32_over_eager_p50_b1"] = rows["ort_fp32"]["p50_ms"] / rows["pytorch_eager"]["p50_ms"]
    return out


def table(result: dict[str, Any]) -> str:
    """A fixed-width text table of :func:`bench_bundle`'s rows."""
    metric = result["metric"]
    head = f"{'runtime':<14}{'p50 ms':>9}{'p95 ms':>9}{'img/s b32':>11}{'KiB':>9}{metric:>10}"
    lines = [head, "-" * len(head)]
    for name, r in result["rows"].items():
        lines.append(f"{name:<14}{r['p50_ms']:>9.3f}{r['p95_ms']:>9.3f}{r['throughput_b32_ips']:>11.0f}"
                     f"{r['bytes'] / 1024:>9.0f}{r[metric]:>10.2f}")
    return "\n".join(lines)


def profile_ops(path: str | Path, x: np.ndarray, runs: int = 50, threads: int = 1) -> dict[str, Any]:
    """ORT's own profiler: share of kernel time per op type (evidence for where int8 time goes)."""
    import json
    import os

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
    so.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        so.profile_file_prefix = os.path.join(tmp, "prof")
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        for _ in range(runs):
            sess.run(None, {name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_run = len(kernels) // runs
    per_op: dict[str, float] = {}
    for e in kernels[per_run * max(1, runs // 5):]:  # skip the first fifth of the runs (warm-up)
        per_op[e["args"]["op_name"]] = per_op.get(e["args"]["op_name"], 0.0) + e["dur"]
    measured = runs - max(1, runs // 5)
    total = sum(per_op.values())
    return {"kernel_ms_per_run": total / measured / 1e3, "nodes_run": per_run,
            "share": {k: round(v / total, 3) for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])}}
