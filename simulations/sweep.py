"""Privacy-utility sweep: adapter kind x user-level epsilon, one fed-sim run per cell, a markdown table and a plot.

    fed-sim sweep --config flair-style-small --kinds head,film,film+head,lora,full --eps 1,2,4,8,inf \
        --out runs/sweep --doc docs/sweep.md

Cells already finished in ``--out`` are reused (the sweep resumes), so delete ``--out`` after changing the
adapters or the apps. ``full`` is the full fine-tuning baseline (every backbone tensor travels as adapter
state, ~1.2 MB per update); it fits the server's default update limits (``max_payload_bytes`` 0 = 4x the
global state, ``max_delta_norm`` 1e3), so it needs no per-kind override.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from fedge.errors import FedgeError

DEFAULT_KINDS = "head,film,film+head,lora,full"
DEFAULT_EPS = "1,2,4,8,inf"


def _cell_dir(out: Path, kind: str, eps: float) -> Path:
    return out / f"{kind.replace('+', '-')}_eps-{'inf' if math.isinf(eps) else f'{eps:g}'}"


def _run_cell(config: str, overrides: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """One cell in a worker process (one torch thread: the sweep runs cells side by side)."""
    import torch

    torch.set_num_threads(1)
    os.environ["FEDGE_NO_PROGRESS"] = "1"
    from fedge.simulations.config import load_config
    from fedge.simulations.runner import run

    done = Path(run_dir) / "summary.json"
    cfg = load_config(config, overrides)
    if done.is_file():
        s = json.loads(done.read_text())
        if s.get("rounds_done") == cfg.federation.rounds:
            return s
    return run(cfg, run_dir, progress=False)


def markdown_table(cells: dict[str, dict[float, dict[str, Any]]], eps_list: list[float], baseline: float) -> str:
    """Final test macro-AP per kind (rows) and epsilon (columns), with the no-adaptation baseline."""
    head = "| adapter | " + " | ".join(f"eps={'inf' if math.isinf(e) else f'{e:g}'}" for e in eps_list) + " |"
    lines = [head, "|---|" + "---:|" * len(eps_list)]
    for kind, row in cells.items():
        vals = [row.get(e, {}).get("final_test", {}).get("macro_ap") for e in eps_list]
        lines.append(f"| {kind} | " + " | ".join("—" if v is None else f"{v:.3f}" for v in vals) + " |")
    lines.append(f"| no adaptation | {baseline:.3f} |" + " |" * (len(eps_list) - 1))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``fed-sim sweep``."""
    p = argparse.ArgumentParser(prog="fed-sim sweep", description=__doc__.splitlines()[0])
    p.add_argument("--config", default="flair-style-small")
    p.add_argument("--kinds", default=DEFAULT_KINDS, help="comma-separated adapter kinds")
    p.add_argument("--eps", default=DEFAULT_EPS, help="comma-separated user-level epsilons ('inf' = no noise)")
    p.add_argument("--rounds", type=int)
    p.add_argument("--backend", default="inprocess", choices=("ray", "inprocess"))
    p.add_argument("--jobs", type=int, default=2, help="cells run side by side (one CPU each)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", type=Path, default=Path("runs/sweep"))
    p.add_argument("--doc", type=Path, help="write the markdown table and the command here (e.g. docs/sweep.md)")
    args = p.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    try:
        eps_list = [math.inf if e.strip() == "inf" else float(e) for e in args.eps.split(",")]
        base: dict[str, Any] = {"simulation.backend": args.backend}
        if args.rounds:
            base["federation.rounds"] = args.rounds
        for item in args.set:
            k, _, v = item.partition("=")
            base[k.strip()] = v.strip()
        jobs: dict[tuple[str, float], Any] = {}
        t0 = time.perf_counter()
        with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for kind in kinds:
                for eps in eps_list:
                    ov = {**base, "federation.adapter": kind, "simulation.user_epsilon": eps}
                    jobs[(kind, eps)] = pool.submit(_run_cell, args.config, ov, str(_cell_dir(args.out, kind, eps)))
            cells: dict[str, dict[float, dict[str, Any]]] = {k: {} for k in kinds}
            for (kind, eps), fut in jobs.items():
                s = fut.result()
                cells[kind][eps] = s
                print(f"{kind:>10} eps={eps:<5g} final test macro-AP {s['final_test'].get('macro_ap', math.nan):.4f} "
                      f"(eps spent {s['user_epsilon']:.3g}, {s['wall_s']:.0f} s)", flush=True)
    except FedgeError as exc:
        print(f"fed-sim sweep: error: {exc}", file=sys.stderr)
        return 2
    first = next(iter(next(iter(cells.values())).values()))
    baseline = float(first["baseline_test"]["macro_ap"])
    table = markdown_table(cells, eps_list, baseline)
    from fedge.simulations.plots import plot_sweep

    args.out.mkdir(parents=True, exist_ok=True)
    series = {k: {e: s["final_test"].get("macro_ap", math.nan) for e, s in row.items()} for k, row in cells.items()}
    plot = plot_sweep(series, baseline, (args.doc.parent if args.doc else args.out) / "sweep.png",
                      "final macro-AP, test users")
    raw = {k: {("inf" if math.isinf(e) else str(e)): s for e, s in row.items()} for k, row in cells.items()}
    (args.out / "sweep.json").write_text(json.dumps(raw, indent=2, default=str) + "\n")
    print(table)
    print(f"sweep: {len(jobs)} cells in {time.perf_counter() - t0:.0f} s; plot {plot}")
    if args.doc:
        cmd = "fed-sim sweep " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[2:]))
        write_doc(args.doc, table, cmd, first, plot)
    return 0


def write_doc(path: Path, table: str, command: str, example: dict[str, Any], plot: Path) -> None:
    """docs/sweep.md: the setting, the table, the plot and the command that regenerates them."""
    text = f"""# Privacy-utility sweep: adapter kind x user-level epsilon

Generated by `fed-sim sweep` (fedge's ServerApp main, strategy and DP-FedAvg code, with the simulation
client handlers; {example['backend']} backend). Setting: `{example['name']}` — {example['dataset']},
{example['population']} training users, cohort {example['cohort_size']}, {example['rounds']} rounds,
clip {example['user_clip']}, delta {example['user_delta']:g}, {example['label_set']} labels; each cell's
noise multiplier is calibrated by `fedge.privacy` so that the run spends the column's user-level epsilon.
Cells: final-round macro-AP on {example['test_users']} held-out test users (one run per cell, one seed).

{table}

![sweep]({plot.name})

Regenerate (from the repository root):

```bash
{command}
```
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
