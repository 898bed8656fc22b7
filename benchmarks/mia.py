"""LiRA membership inference against head adapters trained with DP-SGD at epsilon in {1, 8, inf}.

A frozen backbone (``resnet_gn_small``, fixed seed; a pretrained one if ``--backbone`` is given) turns a
pool of Fashion-MNIST images into features once; only the head adapter trains, so each shadow model
costs about a second. M models are each trained through ``fedge.privacy.train_dp_sgd`` on a random half
of the pool; every model is attacked with the others as shadows (online and offline LiRA). Also reports
test accuracy per epsilon (the privacy-utility figure for the head adapter).

The headline checks the DP bound empirically: at epsilon=1, TPR at 1% FPR must stay below
``e^1 * 0.01 + delta``, which any (1, delta)-DP training guarantees for every attack.

    python benchmarks/mia.py [--quick] [--models 16] [--plot runs/mia_roc.png] [--utility head,film,lora]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedge.models import create_model, load_pretrained
from fedge.privacy.audit import leave_one_out_audit, logit_confidence, plot_roc
from fedge.privacy.dp_sgd import DPSGDConfig, plan, train_dp_sgd
from fedge.privacy.ledger import PrivacyLedger

DELTA = 1e-5


def load_images(n_pool: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """Pool (private candidates) from Fashion-MNIST train, test from its test split; digits as a fallback."""
    rng = np.random.default_rng(seed)
    try:
        from fedge.data.fashion_mnist import load_fashion_mnist

        xtr, ytr = load_fashion_mnist("train")
        xte, yte = load_fashion_mnist("test")
        name = "fashion-mnist"
    except Exception:  # the Debian package is missing: sklearn ships the 8x8 digits offline
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x = x.reshape(-1, 8, 8) * 16
        xtr, ytr, xte, yte, name = x[:1200], y[:1200], x[1200:], y[1200:], "sklearn-digits"
    i = rng.choice(len(xtr), n_pool, replace=False)
    j = rng.choice(len(xte), min(n_test, len(xte)), replace=False)
    return xtr[i], ytr[i], xte[j], yte[j], name


@torch.no_grad()
def features(images: np.ndarray, backbone: Any) -> torch.Tensor:
    x = torch.as_tensor(images, dtype=torch.float32).unsqueeze(1) / 255.0
    return torch.cat([backbone.forward_features(x[k : k + 512]) for k in range(0, len(x), 512)])


def train_head(
    feats: torch.Tensor, labels: torch.Tensor, eps: float, cfg: DPSGDConfig, ledger: PrivacyLedger, name: str, seed: int
) -> nn.Module:
    torch.manual_seed(seed)
    head = nn.Linear(feats.shape[1], 10)
    train_dp_sgd(head, TensorDataset(feats, labels), ledger=ledger, run=f"eps={eps}", round=0, subject=name,
                 config=cfg, seed=seed)
    return head


def adapter_utility(kinds: list[str], eps_list: list[float], n_train: int, epochs: int, backbone: str | None,
                    ) -> dict[str, dict[str, float]]:
    """Test accuracy of each adapter kind trained end to end with DP-SGD at each epsilon.

    Images are average-pooled to 14x14 to fit 2 CPU cores; FiLM and LoRA train with a fresh head.
    """
    from fedge.adapters import AdapterSpec, inject

    xp, yp, xt, yt, _ = load_images(n_train, 1000, seed=2)

    def tensor(images: np.ndarray) -> torch.Tensor:
        return nn.functional.avg_pool2d(torch.as_tensor(images, dtype=torch.float32).unsqueeze(1) / 255.0, 2)

    train = TensorDataset(tensor(xp), torch.as_tensor(yp, dtype=torch.long))
    xt_t, yt_t = tensor(xt), torch.as_tensor(yt, dtype=torch.long)
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp, PrivacyLedger(f"{tmp}/ledger.db") as ledger:
        for eps in eps_list:
            ledger.open_run(f"u{eps}", epsilon=eps, delta=DELTA)
        for kind in kinds:
            out[kind] = {}
            for eps in eps_list:
                torch.manual_seed(0)
                model = create_model("resnet_gn_small", num_classes=10, in_chans=1)
                if backbone:
                    load_pretrained(model, backbone, skip_classifier=True)
                head = AdapterSpec(kind="head", num_classes=10)
                inject(model, [head] if kind == "head" else [AdapterSpec(kind=kind), head])
                private = not math.isinf(eps)
                cfg = DPSGDConfig(batch_size=100, epochs=epochs, lr=1.0 if private else 0.2,
                                  max_grad_norm=1.0 if private else 1e6,
                                  target_epsilon=eps if private else None,
                                  noise_multiplier=None if private else 0.0)
                train_dp_sgd(model, train, ledger=ledger, run=f"u{eps}", round=0, subject=kind, config=cfg, seed=0)
                with torch.no_grad():
                    model.eval()
                    acc = float((model(xt_t).argmax(1) == yt_t).float().mean())
                out[kind]["inf" if not private else str(eps)] = round(acc, 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", type=int, default=None)
    parser.add_argument("--plot", default="runs/mia_roc.png")  # runs/ is git-ignored
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backbone", default=None, help="safetensors weights for resnet_gn_small (default: seeded init)")
    parser.add_argument("--utility", default="", help="also train these adapter kinds end to end, e.g. head,film,lora")
    parser.add_argument("--utility-train", type=int, default=None, help="training examples (default 2000)")
    parser.add_argument("--utility-epochs", type=int, default=None, help="epochs (default 3)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = args.models or (6 if args.quick else 16)
    n_pool, epochs = (150, 6) if args.quick else (500, 40)
    eps_audit = [1.0, 8.0, math.inf]
    eps_utility = [] if args.quick else [2.0, 4.0]
    start = time.time()

    xp, yp, xt, yt, dataset = load_images(n_pool, 2000, seed=0)
    torch.manual_seed(0)
    backbone = create_model("resnet_gn_small", num_classes=10, in_chans=1).eval()
    if args.backbone:
        load_pretrained(backbone, args.backbone, skip_classifier=True)
    fp, ft = features(xp, backbone), features(xt, backbone)
    mu, sd = ft.mean(0), ft.std(0) + 1e-6  # scaling from public (test) data only
    fp, ft = (fp - mu) / sd, (ft - mu) / sd
    yp_t, yt_t = torch.as_tensor(yp, dtype=torch.long), torch.as_tensor(yt, dtype=torch.long)
    rng = np.random.default_rng(1)
    in_mask = np.zeros((models, n_pool), dtype=bool)
    for m in range(models):  # exact halves: every model has the same q, steps and sigma
        in_mask[m, rng.permutation(n_pool)[: n_pool // 2]] = True

    table, curves = [], {}
    with tempfile.TemporaryDirectory() as tmp, PrivacyLedger(f"{tmp}/ledger.db") as ledger:
        for eps in eps_audit + eps_utility:
            ledger.open_run(f"eps={eps}", epsilon=eps, delta=DELTA)
            half = int(in_mask[0].sum())
            if math.isinf(eps):
                cfg = DPSGDConfig(batch_size=50, epochs=epochs, lr=0.5, max_grad_norm=1e6, noise_multiplier=0.0)
            else:
                _, _, sigma = plan(half, DPSGDConfig(batch_size=50, epochs=epochs, target_epsilon=eps), DELTA, "rdp")
                cfg = DPSGDConfig(batch_size=50, epochs=epochs, lr=2.0, max_grad_norm=1.0, noise_multiplier=sigma)
            audited = eps in eps_audit
            conf, accs, spent = [], [], []
            for m in range(models if audited else min(models, 4)):
                idx = np.flatnonzero(in_mask[m])
                head = train_head(fp[idx], yp_t[idx], eps, cfg, ledger, f"model{m}", seed=m)
                spent.append(ledger.epsilon(f"eps={eps}", f"model{m}"))
                with torch.no_grad():
                    conf.append(logit_confidence(head(fp).numpy(), yp))
                    accs.append(float((head(ft).argmax(1) == yt_t).float().mean()))
            row: dict[str, object] = {
                "epsilon": "inf" if math.isinf(eps) else eps,
                "noise_multiplier": round(cfg.noise_multiplier or 0.0, 4),
                "epsilon_spent": "inf" if math.isinf(max(spent)) else round(max(spent), 4),
                "test_accuracy": round(float(np.mean(accs)), 4),
                "models": len(accs),
            }
            if audited:
                online, s, y = leave_one_out_audit(np.stack(conf), in_mask)
                offline, _, _ = leave_one_out_audit(np.stack(conf), in_mask, online=False)
                row["lira_online"], row["lira_offline"] = online.as_dict(), offline.as_dict()
                curves[f"eps={row['epsilon']}"] = (s, y)
            table.append(row)
    plot_path = plot_roc(curves, args.plot, title=f"LiRA, head adapters, {models} models")
    utility = {}
    if args.utility:
        n_train, u_epochs = (300, 1) if args.quick else (2000, 3)
        n_train, u_epochs = args.utility_train or n_train, args.utility_epochs or u_epochs
        utility = {
            "train_examples": n_train, "epochs": u_epochs, "image_size": 14,
            "test_accuracy": adapter_utility(args.utility.split(","), [1.0, 2.0, 4.0, 8.0, math.inf], n_train,
                                             u_epochs, args.backbone),
        }
    eps1 = next(r for r in table if r["epsilon"] == 1.0)
    value = eps1["lira_online"]["tpr@1%fpr"]  # type: ignore[index]
    bound = math.e * 0.01 + DELTA
    print(json.dumps({
        "dataset": dataset,
        "backbone": args.backbone or "resnet_gn_small, seeded random init (frozen)",
        "pool": n_pool,
        "models_per_epsilon": models,
        "epochs": epochs,
        "delta": DELTA,
        "accountant": "rdp",
        "unit": "example",
        "sampling": "poisson",
        "table": table,
        "adapter_utility": utility,
        "plot": str(plot_path),
        "seconds": round(time.time() - start, 1),
        "headline": {
            "metric": "lira_tpr_at_1pct_fpr_eps1 (DP bound e*0.01+delta)",
            "value": value,
            "goal": round(bound, 5),
            "higher_is_better": False,
            "met": bool(value <= bound),
        },
    }, indent=1))


if __name__ == "__main__":
    main()
