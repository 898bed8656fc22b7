"""``fed-sim``: run fedge's ServerApp/ClientApp on Flower's Simulation Engine from a TOML config plus flags.

    fed-sim --config flair-style-small                         # shipped config, run dir runs/flair-style-small
    fed-sim --config flair-style-small --user-eps 4 --adapter film+head --rounds 10
    fed-sim --config flair --flair-path ~/data/flair.hdf5
    fed-sim sweep --config flair-style-small                   # adapter kind x user-level epsilon
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from fedge.errors import FedgeError


def _eps(text: str) -> float:
    return math.inf if text.lower() in ("inf", "none", "off") else float(text)


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="flair-style-small", help="shipped config name or a .toml file")
    p.add_argument("--run-dir", type=Path, help="where results go (default runs/<config name>)")
    p.add_argument("--dataset", choices=("flair-style", "flair"))
    p.add_argument("--flair-path", help="the real FLAIR HDF5 file (dataset flair)")
    p.add_argument("--users", type=int, dest="num_users", help="FLAIR-style users in all populations")
    p.add_argument("--cohort", type=int, dest="cohort_size", help="clients per round")
    p.add_argument("--rounds", type=int)
    p.add_argument("--adapter", help="adapter kinds, e.g. film, head, film+head, lora")
    p.add_argument("--label-set", choices=("fine", "coarse"))
    p.add_argument("--user-eps", type=_eps, dest="user_epsilon",
                   help="target user-level epsilon (calibrates the server's noise; 'inf' = no noise)")
    p.add_argument("--user-noise", type=float, dest="user_noise_multiplier", help="user-level noise multiplier")
    p.add_argument("--user-clip", type=float)
    p.add_argument("--no-user-dp", action="store_true", help="plain FedAvg (no clipping, no noise)")
    p.add_argument("--client-dp", action=argparse.BooleanOptionalAction, default=None,
                   help="example-level DP-SGD on every client (Opacus)")
    p.add_argument("--seed", type=int)
    p.add_argument("--backend", choices=("ray", "inprocess"))
    p.add_argument("--num-cpus", type=int, help="CPUs given to Ray")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any setting, e.g. --set federation.lr=0.1 --set simulation.test_users=50")
    p.add_argument("--fresh", action="store_true", help="delete the run dir first instead of resuming")
    p.add_argument("--no-progress", action="store_true")


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """Flags -> ``load_config`` overrides (only the flags given)."""
    out: dict[str, Any] = {}
    for flag, key in (("dataset", "simulation.dataset"), ("flair_path", "simulation.flair_path"),
                      ("num_users", "simulation.num_users"), ("cohort_size", "federation.cohort_size"),
                      ("rounds", "federation.rounds"), ("adapter", "federation.adapter"),
                      ("label_set", "federation.label_set"), ("user_epsilon", "simulation.user_epsilon"),
                      ("user_noise_multiplier", "federation.user_noise_multiplier"),
                      ("user_clip", "federation.user_clip"), ("client_dp", "federation.client_dp"),
                      ("seed", "federation.seed"), ("backend", "simulation.backend"),
                      ("num_cpus", "simulation.num_cpus")):
        value = getattr(args, flag, None)
        if value is not None:
            out[key] = value
    if getattr(args, "no_user_dp", False):
        out["federation.user_dp"] = False
    if args.user_noise_multiplier is not None and args.user_epsilon is None:
        out["simulation.user_epsilon"] = 0.0  # an explicit noise multiplier wins over the config's target
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise FedgeError(f"--set takes KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _print_summary(s: dict[str, Any], run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"fed-sim {s['name']}: {s['adapter']} on {s['dataset']} ({s['population']} users, "
                    f"cohort {s['cohort_size']}, {s['rounds']} rounds, {s['backend']})")
    t.add_column("")
    t.add_column("macro-AP", justify="right")
    t.add_column("micro-AP", justify="right")
    b, f = s["baseline_test"], s["final_test"]
    t.add_row("pretrained backbone, no adaptation (test users)", f"{b.get('macro_ap', math.nan):.4f}",
              f"{b.get('micro_ap', math.nan):.4f}")
    t.add_row("federated adapters, final round (test users)", f"{f.get('macro_ap', math.nan):.4f}",
              f"{f.get('micro_ap', math.nan):.4f}")
    console = Console()
    console.print(t)
    eps = s["user_epsilon"]
    console.print(f"user-level DP: epsilon {eps:.3g} at delta {s['user_delta']:g} (noise multiplier "
                  f"{s['user_noise_multiplier']:.3f}, clip {s['user_clip']:g}); wall {s['wall_s']:.0f} s; "
                  f"improves over baseline: {s['improves_over_baseline']}")
    console.print(f"results: {run_dir}/summary.json, metrics.jsonl, plots/ap.png, plots/epsilon.png")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fed-sim``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "sweep":
        from fedge.simulations.sweep import main as sweep_main

        return sweep_main(argv[1:])
    parser = argparse.ArgumentParser(prog="fed-sim", description=__doc__.splitlines()[0])
    _add_run_flags(parser)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    try:
        from fedge.simulations.config import load_config
        from fedge.simulations.runner import run

        cfg = load_config(args.config, overrides_from(args))
        run_dir = args.run_dir or Path("runs") / cfg.name
        summary = run(cfg, run_dir, progress=not args.no_progress, fresh=args.fresh)
    except FedgeError as exc:
        print(f"fed-sim: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        _print_summary(summary, run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
