"""fedge's end-to-end demo: ``python -m fedge.demo`` (the README's first command runs it).

1. pretrain (or load the cached) default backbone on the public split;
2. adapt it centrally with each adapter kind (non-private reference table);
3. train FiLM+head under example-level DP-SGD (Opacus) and print epsilon next to the metrics;
4. federate: ``fed-sim --config flair-style-small`` with user-level DP (Flower Simulation Engine);
5. edge: export the federated adapters to ONNX, quantize to int8, convert to .ort, benchmark, and run the
   bundle through the phone-side runtime;
6. cloud-edge forward-only test-time adaptation on a short corrupted stream.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from fedge.data.flair_style import FlairStyleDataset
from fedge.errors import FedgeError
from fedge.pretrain import PretrainConfig, cache_path, load_or_pretrain_backbone
from fedge.train import TrainConfig, adapt_centrally, evaluate

KINDS = ("head", "film", "film+head", "lora", "lora+head")
STAGES = ("adapters", "dp", "federated", "edge", "tta")


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _run(console: Console, cmd: list[str]) -> None:
    """Run a fedge command as a user would, echoing it; a failure stops the demo."""
    console.print(f"[dim]$ {' '.join(cmd)}[/dim]")
    bin_dir = Path(sys.executable).parent
    exe = str(bin_dir / cmd[0]) if (bin_dir / cmd[0]).exists() else cmd[0]
    proc = subprocess.run([exe, *cmd[1:]], env={**os.environ, "FEDGE_NO_PROGRESS": "1"})
    if proc.returncode != 0:
        raise FedgeError(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}")


def stage_adapters(console: Console, backbone: torch.nn.Module, ds: FlairStyleDataset, args: argparse.Namespace
                   ) -> dict[str, dict[str, float]]:
    train_data = ds.pooled("train", args.train_users)
    test_data = ds.pooled("test", args.test_users)
    console.print(f"{args.train_users} train users ({len(train_data)} images), {args.test_users} test users "
                  f"({len(test_data)} images), multi-label fine labels (10)")
    base = evaluate(backbone, test_data.images, test_data.labels["fine"], multilabel=True)
    rows = {"none (pretrained)": {"trainable": 0, "fraction": 0.0, **base, "seconds": 0.0}}
    cfg = TrainConfig(epochs=args.epochs, lr=3e-3, batch_size=64)
    for kinds in KINDS:
        rows[kinds] = adapt_centrally(backbone, kinds, train_data, test_data, cfg)
    console.print(_table(
        "adapters on the private task (central, non-private; test users, fine labels)",
        ["adapter", "trainable params", "% of backbone", "macro AP", "micro AP", "train s"],
        [[k, f"{r['trainable']:,}", f"{100 * r['fraction']:.2f}", f"{r['macro_ap']:.3f}", f"{r['micro_ap']:.3f}",
          f"{r['seconds']:.1f}"] for k, r in rows.items()]))
    return rows


def stage_dp(console: Console, backbone: torch.nn.Module, ds: FlairStyleDataset, args: argparse.Namespace
             ) -> dict[str, dict[str, object]]:
    """FiLM+head with DP-SGD (example-level) at a few target epsilons, spends recorded in a ledger."""
    import copy

    from torch.utils.data import TensorDataset

    from fedge.adapters import inject, parse_adapter_kinds
    from fedge.privacy import DPSGDConfig, PrivacyLedger, train_dp_sgd

    train_data = ds.pooled("train", args.train_users)
    test_data = ds.pooled("test", args.test_users)
    dataset = TensorDataset(torch.as_tensor(train_data.images), torch.as_tensor(train_data.labels["fine"]))
    delta = 1.0 / (10 * len(dataset))
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, object]] = {}
    with PrivacyLedger(args.out / "dp-ledger.sqlite") as ledger:
        for eps in (1.0, 8.0, math.inf):
            run = f"demo-dp-eps{eps:g}-{int(time.time())}"
            ledger.open_run(run, epsilon=eps, delta=delta, unit="example", accountant="rdp")
            model = copy.deepcopy(backbone)
            inject(model, parse_adapter_kinds("film+head", 10, multilabel=True))
            private = math.isfinite(eps)
            # the same clipped SGD in every row; only the noise differs (sigma = 0 for eps = inf)
            cfg = DPSGDConfig(batch_size=128, epochs=args.epochs, lr=2.0, max_grad_norm=1.0,
                              target_epsilon=eps if private else None, noise_multiplier=None if private else 0.0)
            t0 = time.perf_counter()
            res = train_dp_sgd(model, dataset, ledger=ledger, run=run, round=0, subject="demo", config=cfg,
                               loss_fn=torch.nn.BCEWithLogitsLoss(), seed=0)
            metrics = evaluate(model, test_data.images, test_data.labels["fine"], multilabel=True)
            report = res.report
            results[f"{eps:g}"] = {**metrics, "epsilon": report.epsilon, "guarantee": str(report) if private else
                                   "none (sigma = 0, same clipping)", "seconds": time.perf_counter() - t0}
    console.print(_table(
        "FiLM+head under DP-SGD (central; the DP unit is one training example)",
        ["target eps", "macro AP", "micro AP", "guarantee (computed by fedge.privacy)", "s"],
        [[k, f"{r['macro_ap']:.3f}", f"{r['micro_ap']:.3f}", str(r["guarantee"]), f"{r['seconds']:.0f}"]
         for k, r in results.items()]))
    return results


def stage_federated(console: Console, args: argparse.Namespace) -> Path:
    run_dir = args.out / "sim"
    cmd = ["fed-sim", "--config", "flair-style-small", "--run-dir", str(run_dir), "--no-progress"]
    if args.quick:
        cmd += ["--rounds", "3", "--set", "simulation.test_users=30"]
    _run(console, cmd)
    console.print(f"plots and metrics in {run_dir}/")
    return run_dir


def stage_edge(console: Console, args: argparse.Namespace, adapters: Path) -> None:
    import numpy as np

    from fedge.edge.runtime import EdgeModel

    bundle = args.out / "bundle"
    backbone = cache_path(PretrainConfig())
    _run(console, ["fed-edge", "export", "--backbone", str(backbone), "--adapter", str(adapters), "--out", str(bundle)])
    _run(console, ["fed-edge", "quantize", str(bundle)])
    _run(console, ["fed-edge", "convert", str(bundle)])
    _run(console, ["fed-edge", "bench", str(bundle), "--backbone", str(backbone), "--adapter", str(adapters),
                   "--json", str(args.out / "edge-bench.json")])
    _run(console, ["fed-edge", "check", str(bundle)])
    ds = FlairStyleDataset(args.users, seed=0)
    user = ds.load_user(ds.user_ids("test")[0])
    edge = EdgeModel(bundle, "int8_ort")
    preds = edge.predict(np.round(user.images[:3] * 255).astype(np.uint8))  # as a camera delivers them
    truth = [[n for n, v in zip(ds.label_names["fine"], row) if v] for row in user.labels["fine"][:3]]
    console.print(_table("edge runtime (int8 .ort, onnxruntime + numpy only) on a test user's photos",
                         ["image", "predicted labels", "true labels"],
                         [[str(i), ", ".join(p.get("labels", [])) or "-", ", ".join(t)]
                          for i, (p, t) in enumerate(zip(preds, truth))]))


def stage_tta(console: Console, args: argparse.Namespace) -> None:
    cmd = [sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks" / "tta.py"), "--quick"]
    console.print("[dim]$ python benchmarks/tta.py --quick[/dim]")
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "FEDGE_NO_PROGRESS": "1"})
    if proc.returncode != 0:
        raise FedgeError(f"cloud-edge adaptation failed: {proc.stderr.strip().splitlines()[-1:]}")
    result = json.loads(proc.stdout)
    (args.out / "tta.json").write_text(json.dumps(result, indent=2))
    rows = []
    for name, r in result.get("streams", {}).items():
        rows.append([name, *(f"{100 * r[m]['accuracy']:.1f}" for m in ("no_adapt", "lame", "tent", "cloud_edge")),
                     f"{100 * r['cloud_edge'].get('upload_fraction', float('nan')):.0f}%"])
    console.print(_table("forward-only cloud-edge adaptation on corrupted streams (accuracy %)",
                         ["stream", "no adapt", "LAME", "Tent (backprop)", "cloud-edge", "uploaded"], rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedge.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000, help="FLAIR-style population size")
    parser.add_argument("--train-users", type=int, default=300, help="train users pooled for central adaptation")
    parser.add_argument("--test-users", type=int, default=100)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {STAGES}")
    parser.add_argument("--quick", action="store_true", help="smaller stages (smoke run)")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="where results are written")
    args = parser.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if unknown := set(stages) - set(STAGES):
        parser.error(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
    if args.quick:
        args.train_users, args.test_users, args.epochs = min(args.train_users, 60), min(args.test_users, 30), 1.0
    console = Console()
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, object] = {}
    try:
        t0 = time.perf_counter()
        console.rule("[bold]1. backbone (public split)")
        backbone, info = load_or_pretrain_backbone(PretrainConfig())
        console.print(f"backbone {info['arch']} hash {info['backbone_hash'][:16]}, public macro-AP "
                      f"{info['public_macro_ap']} (pretrained in {info['seconds']} s, cached under FEDGE_HOME)")
        ds = FlairStyleDataset(args.users, seed=0)
        if "adapters" in stages:
            console.rule("[bold]2. adapters on the private FLAIR-style task")
            summary["adapters"] = stage_adapters(console, backbone, ds, args)
        if "dp" in stages:
            console.rule("[bold]3. differential privacy: DP-SGD on adapters (Opacus)")
            summary["dp"] = stage_dp(console, backbone, ds, args)
        sim_dir = args.out / "sim"
        if "federated" in stages:
            console.rule("[bold]4. federated: fed-sim flair-style-small with user-level DP")
            sim_dir = stage_federated(console, args)
        if "edge" in stages:
            console.rule("[bold]5. edge: export, int8, .ort, bench, runtime")
            adapters = sim_dir / "adapters" / "final.safetensors"
            if not adapters.is_file():
                raise FedgeError(f"no federated adapters at {adapters}; run the 'federated' stage first")
            stage_edge(console, args, adapters)
        if "tta" in stages:
            console.rule("[bold]6. cloud-edge forward-only test-time adaptation")
            stage_tta(console, args)
        (args.out / "demo.json").write_text(json.dumps(summary, indent=2, default=str))
        console.print(f"results in {args.out}/ ; total {time.perf_counter() - t0:.0f} s")
    except FedgeError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
