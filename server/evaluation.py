"""Server-side evaluation on a held-out population, and aggregation of clients' evaluation replies.

The held-out users are the ``val`` population of the run's dataset (FLAIR-style or the real FLAIR file),
never trained on by the federation or used for pretraining; metrics are FLAIR's macro/micro average precision.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import cached_property

from flwr.app import Message
from torch import nn

from fedge.adapters import AdapterState, load_adapter_state
from fedge.data.base import UserData
from fedge.data.source import pooled
from fedge.server.config import FederationConfig
from fedge.server.protocol import METRICS
from fedge.server.task import adapted_model, initial_state, specs_for, task_for
from fedge.train import evaluate


class ServerEvaluator:
    """Builds the run's model once; evaluates global adapter states on held-out (``val``) users."""

    def __init__(self, cfg: FederationConfig) -> None:
        self.cfg = cfg
        self.task = task_for(cfg)
        self.pretrain = self.task.pretrain
        self.specs = specs_for(cfg.adapter, self.task.num_classes)

    def initial_state(self) -> AdapterState:
        return initial_state(self.pretrain, self.specs, seed=self.cfg.seed)

    @cached_property
    def _model(self) -> nn.Module:
        return adapted_model(self.pretrain, self.specs, seed=self.cfg.seed)

    @cached_property
    def _held_out(self) -> UserData | None:
        return pooled(self.task.source, "val", self.cfg.eval_users) if self.cfg.eval_users > 0 else None

    def evaluate(self, state: AdapterState) -> dict[str, float]:
        """Macro/micro AP of the backbone with ``state`` on the held-out users' ``label_set`` labels."""
        data = self._held_out
        if data is None:
            return {}
        load_adapter_state(self._model, state)
        return evaluate(self._model, data.images, data.labels[self.cfg.label_set], multilabel=True)

    def full_model_bytes(self) -> int:
        """Bytes of the whole model (backbone + adapters) in float32: what full fine-tuning would send."""
        return int(sum(t.numel() * t.element_size() for t in self._model.state_dict().values()))


def aggregate_client_metrics(replies: Iterable[Message]) -> dict[str, float]:
    """Example-weighted mean of each metric the clients reported (FLAIR-style federated evaluation).

    Per-client AP averaged by examples approximates the pooled AP; the server-side held-out numbers
    are the pooled ones.
    """
    sums: dict[str, float] = {}
    total = 0.0
    clients = 0
    for msg in replies:
        if msg.has_error() or not msg.has_content() or METRICS not in msg.content:
            continue
        m = dict(msg.content[METRICS])
        n = float(m.pop("num-examples", 0.0))  # type: ignore[arg-type]
        if n <= 0:
            continue
        clients += 1
        total += n
        for k, v in m.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                sums[k] = sums.get(k, 0.0) + n * float(v)
    out = {k.replace("-", "_"): v / total for k, v in sums.items()} if total else {}
    out["eval_clients"] = float(clients)
    out["eval_examples"] = total
    return out
