"""fedge's end-to-end demo: ``python -m fedge.demo`` (the README's first command runs it).

1. pretrain (or load the cached) default backbone on the public split;
2. adapt it to the private FLAIR-style task with each adapter kind and print trainable parameters,
   macro/micro average precision and time next to the zero-adaptation baseline.
Later stages (DP, federation, edge export) are added by the parts that provide them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from fedge.data.flair_style import FlairStyleDataset
from fedge.errors import FedgeError
from fedge.pretrain import PretrainConfig, load_or_pretrain_backbone
from fedge.train import TrainConfig, adapt_centrally, evaluate

KINDS = ("head", "film", "film+head", "lora", "lora+head")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedge.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000, help="FLAIR-style population size")
    parser.add_argument("--train-users", type=int, default=300, help="train users pooled for central adaptation")
    parser.add_argument("--test-users", type=int, default=100)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="where results are written")
    args = parser.parse_args(argv)
    console = Console()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        t0 = time.perf_counter()
        console.rule("[bold]1. backbone (public split)")
        backbone, info = load_or_pretrain_backbone(PretrainConfig())
        console.print(f"backbone {info['arch']} hash {info['backbone_hash'][:16]}, public macro-AP "
                      f"{info['public_macro_ap']} (pretrained in {info['seconds']} s, cached under FEDGE_HOME)")
        console.rule("[bold]2. adapters on the private FLAIR-style task (central, non-private reference)")
        ds = FlairStyleDataset(args.users, seed=0)
        train_data = ds.pooled("train", args.train_users)
        test_data = ds.pooled("test", args.test_users)
        console.print(f"{args.train_users} train users ({len(train_data)} images), {args.test_users} test users "
                      f"({len(test_data)} images), multi-label fine labels (10)")
        base = evaluate(backbone, test_data.images, test_data.labels["fine"], multilabel=True)
        rows = {"none (pretrained)": {"trainable": 0, "fraction": 0.0, **base, "seconds": 0.0}}
        cfg = TrainConfig(epochs=args.epochs, lr=3e-3, batch_size=64)
        for kinds in KINDS:
            rows[kinds] = adapt_centrally(backbone, kinds, train_data, test_data, cfg)
        table = Table(title="adapters on the private task (test users, fine labels)")
        for col in ("adapter", "trainable params", "% of backbone", "macro AP", "micro AP", "train s"):
            table.add_column(col, justify="right" if col != "adapter" else "left")
        for name, r in rows.items():
            table.add_row(name, f"{r['trainable']:,}", f"{100 * r['fraction']:.2f}", f"{r['macro_ap']:.3f}",
                          f"{r['micro_ap']:.3f}", f"{r['seconds']:.1f}")
        console.print(table)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "adapters.json").write_text(json.dumps(rows, indent=2))
        console.print(f"results in {args.out}/ ; total {time.perf_counter() - t0:.0f} s")
    except FedgeError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
