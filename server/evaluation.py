"""Server-side evaluation on a held-out population, and aggregation of clients' evaluation replies."""

from __future__ import annotations

import math
from collections.abc import Iterable

from flwr.app import Message
from torch import nn

from fedge.adapters import AdapterState, load_adapter_state
from fedge.data.base import UserData
from fedge.data.flair_style import FlairStyleDataset
from fedge.server.config import FederationConfig
from fedge.server.protocol import METRICS
from fedge.server.task import adapted_model, initial_state, pretrain_config, specs_for
from fedge.train import evaluate


class ServerEvaluator:
    """Builds the run's model once; evaluates global adapter states on held-out (``val``) users."""

    def __init__(self, cfg: FederationConfig) -> None:
        self.cfg = cfg
        self.pretrain = pretrain_config({k.replace("_", "-"): v for k, v in vars(cfg).items()})
        self.specs = specs_for(cfg.adapter, cfg.num_classes)
        self._model: nn.Module | None = None
        self._data: UserData | None = None

    def initial_state(self) -> AdapterState:
        return initial_state(self.pretrain, self.specs, seed=self.cfg.seed)

    def _ensure(self) -> None:
        if self._model is None:
            self._model = adapted_model(self.pretrain, self.specs, seed=self.cfg.seed)
        if self._data is None and self.cfg.eval_users > 0:
            ds = FlairStyleDataset(num_users=self.cfg.num_users, seed=self.cfg.data_seed)
            self._data = ds.pooled("val", self.cfg.eval_users)

    def evaluate(self, state: AdapterState) -> dict[str, float]:
        """Macro/micro AP of the backbone with ``state`` on the held-out users' ``label_set`` labels."""
        if self.cfg.eval_users <= 0:
            return {}
        self._ensure()
        assert self._model is not None and self._data is not None
        load_adapter_state(self._model, state)
        return evaluate(self._model, self._data.images, self._data.labels[self.cfg.label_set], multilabel=True)

    def full_model_bytes(self) -> int:
        """Bytes of the whole model (backbone + adapters) in float32: what full fine-tuning would send."""
        self._ensure()
        assert self._model is not None
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
