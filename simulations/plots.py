"""PNG plots of a run (AP vs round, user-level epsilon vs round) and of a sweep (matplotlib, Agg)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(rounds: Sequence[Mapping[str, Any]], test: Sequence[Mapping[str, Any]], baseline: Mapping[str, float],
             out_dir: str | Path, title: str) -> list[Path]:
    """``ap.png`` (server val AP per round, test AP at evaluated rounds, baseline) and ``epsilon.png``."""
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    val = [(r["round"], r["server_macro_ap"]) for r in rounds if "server_macro_ap" in r]
    if val:
        ax.plot(*zip(*val), "-", color="tab:blue", alpha=0.6, label="macro-AP, val users (server)")
    for key, style, label in (("macro_ap", "o-", "macro-AP, test users"), ("micro_ap", "s--", "micro-AP, test users")):
        pts = [(r["round"], r[key]) for r in test if key in r]
        if pts:
            ax.plot(*zip(*pts), style, label=label)
    if "macro_ap" in baseline:
        ax.axhline(baseline["macro_ap"], color="gray", ls=":", label="pretrained backbone, no adaptation (test)")
    ax.set_xlabel("round")
    ax.set_ylabel("average precision")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    paths.append(out / "ap.png")
    fig.savefig(paths[-1])
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=110)
    eps = [(r["round"], r["user_eps"]) for r in rounds if "user_eps" in r and math.isfinite(r["user_eps"])]
    if eps:
        ax.plot(*zip(*eps), "o-", ms=3, color="tab:red")
        ax.set_ylabel("user-level epsilon (cumulative)")
    else:
        ax.text(0.5, 0.5, "no user-level noise: epsilon = inf", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("round")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out / "epsilon.png")
    fig.savefig(paths[-1])
    plt.close(fig)
    return paths


def plot_sweep(table: Mapping[str, Mapping[float, float]], baseline: float, path: str | Path, ylabel: str) -> Path:
    """One line per adapter kind: final test macro-AP vs user-level epsilon (inf drawn at the right edge)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    eps_all = sorted({e for row in table.values() for e in row})
    finite = [e for e in eps_all if math.isfinite(e)]
    inf_x = (max(finite) * 2) if finite else 1.0
    for kind, row in table.items():
        pts = sorted((inf_x if not math.isfinite(e) else e, v) for e, v in row.items())
        ax.plot(*zip(*pts), "o-", label=kind)
    ax.axhline(baseline, color="gray", ls=":", label="no adaptation")
    ax.set_xscale("log", base=2)
    ax.set_xticks(finite + [inf_x], [f"{e:g}" for e in finite] + ["inf"])
    ax.set_xlabel("user-level epsilon")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
