"""One client's work in a round: check the backbone, train the adapters (DP-SGD), return the delta.

Plain functions a user can call without Flower; :mod:`fedge.client.app` only unpacks messages into them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fedge.adapters import AdapterState, adapter_state, state_delta
from fedge.adapters.head import classifier_name
from fedge.data.base import UserData
from fedge.errors import DataError
from fedge.server.task import adapted_model, pretrain_config
from fedge.train import TrainConfig, evaluate, train


def _labels(data: UserData, label_set: str, model: torch.nn.Module) -> Any:
    if label_set not in data.labels:
        raise DataError(f"local data of {data.user_id} has no {label_set!r} labels (has {sorted(data.labels)})")
    labels = data.labels[label_set]
    outputs = classifier_outputs(model)
    if labels.shape[1] != outputs:
        raise DataError(f"local data of {data.user_id} has {labels.shape[1]} {label_set!r} labels but the "
                        f"federation's model has {outputs} outputs; give this device the run's dataset")
    return labels


def classifier_outputs(model: torch.nn.Module) -> int:
    """Number of outputs of a model's classifier (the adapters' head or the backbone's own)."""
    return int(getattr(model, classifier_name(model)).out_features)


def local_update(global_state: AdapterState, hparams: Mapping[str, Any], data: UserData,
                 state_dir: str | Path | None = None, epsilon_budget: float = 0.0
                 ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Train the adapters of ``global_state`` on ``data``; returns ``(delta, metrics)``.

    With ``client-dp`` the training is DP-SGD through ``fedge.privacy`` and the spend is recorded in the
    device's own ledger under ``state_dir`` (budget ``epsilon_budget``, 0 = none); ``metrics["eps-spent"]``
    is the device's cumulative example-level epsilon after this round.
    """
    t0 = time.perf_counter()
    model = adapted_model(pretrain_config(hparams), global_state.specs, global_state)
    labels = _labels(data, str(hparams.get("label-set", "fine")), model)
    t1 = time.perf_counter()
    cfg = TrainConfig(epochs=float(hparams.get("local-epochs", 1.0)), lr=float(hparams.get("lr", 0.05)),
                      batch_size=int(hparams.get("batch-size", 16)), optimizer=str(hparams.get("optimizer", "sgd")),
                      seed=int(hparams.get("seed", 0)))
    if bool(hparams.get("client-dp", False)):
        from fedge.client import dp as client_dp

        stats = client_dp.train_dp(model, data.images, labels, cfg, hparams, state_dir, epsilon_budget)
    else:
        stats = train(model, data.images, labels, multilabel=True, cfg=cfg)
        stats["eps-spent"] = 0.0
    t2 = time.perf_counter()
    delta = dict(state_delta(adapter_state(model), global_state))
    metrics = {"num-examples": float(len(data)), "train-loss": float(stats["loss"]),
               "eps-spent": float(stats.get("eps-spent", 0.0)), "steps": float(stats.get("steps", 0)),
               "setup-s": t1 - t0, "train-s": t2 - t1, "compute-s": time.perf_counter() - t0}
    return delta, metrics


def local_evaluate(global_state: AdapterState, hparams: Mapping[str, Any], data: UserData) -> dict[str, float]:
    """The task metrics (macro/micro AP) of ``global_state`` on this client's data."""
    model = adapted_model(pretrain_config(hparams), global_state.specs, global_state)
    out = evaluate(model, data.images, _labels(data, str(hparams.get("label-set", "fine")), model), multilabel=True)
    return {"num-examples": float(len(data)), **out}
