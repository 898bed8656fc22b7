"""Cloud-edge forward-only test-time adaptation vs no-adapt, LAME and Tent on Fashion-MNIST-C-style streams.

Per corruption (severity --severity) and for a continual stream that switches corruption without resets:
online accuracy of every method on the same samples, the cloud-edge upload fraction and bytes up/down.
The edge model (TinyCNN, run by ONNX Runtime from an adaptable bundle) and the cloud foundation model
(resnet_gn_small) are trained once on clean Fashion-MNIST train images and cached under FEDGE_HOME/tta
(first run: a few minutes); `--quick` then runs in under a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from fedge.data.fashion_mnist import load_fashion_mnist
from fedge.edge.tta.evaluate import RunConfig, run_cloud_edge, run_lame, run_model, run_no_adapt, run_tent
from fedge.edge.tta.streams import CORRUPTIONS, continual_stream, corruption_stream
from fedge.edge.tta.task import EDGE_DEFAULT, FOUNDATION_DEFAULT, load_or_train
from fedge.paths import fedge_home

QUICK = ("gaussian_noise", "motion_blur", "jpeg")  # one per family: noise, blur, digital
METHODS = ("no_adapt", "lame", "tent", "cloud_edge")


def edge_bundle(edge: torch.nn.Module) -> str:
    """The edge model's adaptable bundle, exported once per edge-model recipe and reused."""
    from fedge.adapters import backbone_hash
    from fedge.edge.manifest import read_manifest
    from fedge.edge.tta.task import export_edge_bundle

    path = fedge_home() / "tta" / f"bundle-{EDGE_DEFAULT.key()}"
    try:
        if read_manifest(path)["backbone_hash"] == backbone_hash(edge):
            return str(path)
    except Exception:  # missing or stale: export again
        pass
    export_edge_bundle(edge, path)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 corruptions, short streams: under a minute")
    parser.add_argument("--severity", type=int, default=3)
    parser.add_argument("--n", type=int, default=None, help="samples per corruption (default 1000, quick 300)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = args.n or (300 if args.quick else 1000)
    names = QUICK if args.quick else tuple(CORRUPTIONS)
    t0 = time.perf_counter()
    edge, foundation = load_or_train(EDGE_DEFAULT), load_or_train(FOUNDATION_DEFAULT)
    bundle = edge_bundle(edge)
    images, labels = load_fashion_mnist("test")
    cfg = RunConfig()
    streams = {name: corruption_stream(images, labels, name, args.severity, n, seed=i)
               for i, name in enumerate(names)}
    streams["continual"] = continual_stream(images, labels, names, args.severity, max(100, n // 2), seed=99)
    results: dict[str, dict] = {}
    for name, stream in streams.items():
        r = {"no_adapt": run_no_adapt(bundle, stream, cfg), "lame": run_lame(edge, stream, cfg),
             "tent": run_tent(edge, stream, cfg), "cloud_edge": run_cloud_edge(bundle, edge, foundation, stream, cfg),
             "foundation_no_adapt": run_model(foundation, stream, cfg), "n": len(stream)}
        results[name] = r
        print(f"{name:15s} " + " ".join(f"{m}={r[m]['accuracy']:.3f}" for m in METHODS)
              + f" upload={r['cloud_edge']['upload_fraction']:.3f}", file=sys.stderr, flush=True)
    per_corruption = [results[k] for k in names]
    mean = {m: float(np.mean([r[m]["accuracy"] for r in per_corruption])) for m in (*METHODS, "foundation_no_adapt")}
    upload = float(np.mean([r["cloud_edge"]["upload_fraction"] for r in results.values()]))
    max_upload = float(max(r["cloud_edge"]["upload_fraction"] for r in results.values()))
    margin = mean["cloud_edge"] - max(mean["no_adapt"], mean["lame"], mean["tent"])
    met = (mean["cloud_edge"] > mean["no_adapt"] and mean["cloud_edge"] > mean["lame"]
           and mean["cloud_edge"] >= mean["tent"] and max_upload <= 0.30)
    out = {
        "task": {"dataset": "Fashion-MNIST test, corrupted", "severity": args.severity, "samples_per_stream": n,
                 "batch_size": cfg.batch_size, "edge": EDGE_DEFAULT.arch, "foundation": FOUNDATION_DEFAULT.arch,
                 "edge_parameters": sum(p.numel() for p in edge.parameters()),
                 "foundation_parameters": sum(p.numel() for p in foundation.parameters()),
                 "edge_clean_accuracy": run_no_adapt(bundle, corruption_stream(images, labels, "clean", 1, n), cfg)
                 ["accuracy"], "threads": args.threads, "quick": args.quick},
        "streams": results,
        "mean_over_corruptions": mean,
        "cloud_edge_upload_fraction": {"mean": upload, "max": max_upload},
        "device_backprop": {"cloud_edge": False, "lame": False, "tent": True},
        "seconds": time.perf_counter() - t0,
        "headline": {"metric": "cloud-edge mean accuracy minus the best baseline (no-adapt, LAME, Tent), "
                               "with <= 30% uploaded", "value": margin, "goal": 0.0, "higher_is_better": True,
                     "met": bool(met)},
    }
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
