"""Local DP-SGD for one round through ``fedge.privacy``, with the device's own durable ledger.

The ledger lives in the device's state dir (``<state-dir>/privacy-ledger.sqlite``), one run per federation,
subject ``"device"``; its budget is the device's (``fed-client --epsilon-budget``), so a device refuses to
train once its own data would pass it, whatever the server asks. The round's ``seed`` from the server is
deliberately not used for DP noise or sampling: a noise seed the server knows would cancel the privacy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedge.privacy.dp_sgd import DPSGDConfig, train_dp_sgd
from fedge.privacy.ledger import PrivacyLedger
from fedge.train import TrainConfig

SUBJECT = "device"


def train_dp(model: nn.Module, images: np.ndarray, labels: np.ndarray, cfg: TrainConfig,
             hparams: Mapping[str, Any], state_dir: str | Path | None, epsilon_budget: float = math.inf
             ) -> dict[str, float]:
    """DP-SGD on the model's adapters; returns loss, steps and the device's cumulative epsilon."""
    if state_dir is None:
        raise ValueError("DP training needs a state dir for the device's privacy ledger")
    run = str(hparams.get("run-name", "federation"))
    dataset = TensorDataset(torch.as_tensor(images, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.float32))
    dp_cfg = DPSGDConfig(batch_size=cfg.batch_size, epochs=cfg.epochs, lr=cfg.lr,
                         max_grad_norm=float(hparams.get("max-grad-norm", 1.0)),
                         noise_multiplier=float(hparams.get("noise-multiplier", 1.0)))
    with PrivacyLedger(Path(state_dir) / "privacy-ledger.sqlite") as ledger:
        ledger.open_run(run, epsilon=epsilon_budget if epsilon_budget > 0 else math.inf,
                        delta=float(hparams.get("target-delta", 1e-4)), unit="example")
        res = train_dp_sgd(model, dataset, ledger=ledger, run=run, round=int(hparams.get("round", 0)),
                           subject=SUBJECT, config=dp_cfg, loss_fn=nn.BCEWithLogitsLoss(), seed=None)
    model.eval()
    return {"loss": res.mean_loss, "steps": float(res.steps), "eps-spent": res.spend.epsilon_after,
            "noise-multiplier": res.noise_multiplier}
