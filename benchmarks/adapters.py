"""Adapter kinds side by side: trainable parameters, train throughput, and accuracy after a fixed budget.

Prints one JSON object (last key ``headline``). Every kind trains on the same pooled private data for the same
number of samples, from the same cached backbone, in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from fedge.data.flair_style import FlairStyleDataset
from fedge.pretrain import PretrainConfig, load_or_pretrain_backbone
from fedge.train import TrainConfig, adapt_centrally, evaluate

KINDS = ("head", "film", "film+head", "lora", "lora+head")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small data, under a minute")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("FEDGE_NO_PROGRESS", "1")
    backbone, info = load_or_pretrain_backbone(PretrainConfig(), progress=False)
    ds = FlairStyleDataset(1000, seed=0)
    train_data = ds.pooled("train", 40 if args.quick else 300)
    test_data = ds.pooled("test", 30 if args.quick else 100)
    budget_epochs = 0.5 if args.quick else 2.0
    cfg = TrainConfig(epochs=budget_epochs, lr=3e-3, batch_size=64)
    n_backbone = sum(p.numel() for p in backbone.parameters())
    results: dict[str, dict[str, float]] = {
        "none": {"trainable": 0, "fraction": 0.0,
                 **evaluate(backbone, test_data.images, test_data.labels["fine"], multilabel=True)}}
    for kinds in KINDS:
        results[kinds] = adapt_centrally(backbone, kinds, train_data, test_data, cfg, progress=False)
    fraction = results["film+head"]["fraction"]
    out = {
        "backbone": {"arch": info["arch"], "parameters": n_backbone, "hash": info["backbone_hash"][:16]},
        "task": {"train_images": len(train_data), "test_images": len(test_data), "epochs": budget_epochs,
                 "metric": "macro/micro AP, fine labels, test users", "threads": args.threads},
        "kinds": results,
        "headline": {"metric": "film+head trainable fraction of the backbone", "value": fraction,
                     "goal": 0.01, "higher_is_better": False, "met": fraction <= 0.01},
    }
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
