"""What travels in a fedge Flower message: adapter tensors only, plus small typed metadata.

Server -> client (``train`` / ``evaluate``):
    ``global``  ArrayRecord of the round's global adapter tensors
    ``config``  ConfigRecord: round, backbone hash, adapter specs (JSON) and the round's hyperparameters
Client -> server (``train`` reply):
    ``delta``   ArrayRecord of ``new - global`` per adapter tensor
    ``meta``    ConfigRecord: backbone hash the client trained on
    ``metrics`` MetricRecord: ``num-examples``, ``eps-spent``, ``train-loss``, ``compute-s``, ...
Client -> server (``evaluate`` reply):
    ``metrics`` MetricRecord: ``num-examples`` and the task's metrics (macro/micro AP or accuracy)

Shared by ``fedge.server`` and ``fedge.client`` so that both ends agree on names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedge.adapters import AdapterState
from fedge.adapters.spec import specs_from_json, specs_to_json
from fedge.errors import ValidationError

GLOBAL, CONFIG, DELTA, META, METRICS = "global", "config", "delta", "meta", "metrics"


def encode_global(state: AdapterState, round_num: int, hparams: Mapping[str, Any]) -> RecordDict:
    """Content of a server -> client message for ``state`` in round ``round_num``."""
    cfg = ConfigRecord({**dict(hparams), "round": round_num, "backbone-hash": state.backbone_hash,
                        "specs": specs_to_json(state.specs)})
    return RecordDict({GLOBAL: ArrayRecord(torch_state_dict=dict(state)), CONFIG: cfg})


def decode_global(content: RecordDict) -> tuple[AdapterState, dict[str, Any]]:
    """Inverse of :func:`encode_global` (on the client)."""
    cfg = dict(content[CONFIG])
    tensors = content.array_records[GLOBAL].to_torch_state_dict()
    state = AdapterState(tensors, specs_from_json(str(cfg["specs"])), str(cfg["backbone-hash"]))
    return state, cfg


def encode_update(delta: Mapping[str, torch.Tensor], backbone_hash: str, metrics: Mapping[str, float]) -> RecordDict:
    """Content of a client's ``train`` reply."""
    return RecordDict({DELTA: ArrayRecord(torch_state_dict={k: v.detach().cpu().contiguous() for k, v in delta.items()}),
                       META: ConfigRecord({"backbone-hash": backbone_hash}),
                       METRICS: MetricRecord({k: float(v) for k, v in metrics.items()})})


@dataclass
class ClientUpdate:
    """A parsed (not yet validated) client update."""

    node_id: int
    delta: dict[str, torch.Tensor]
    backbone_hash: str
    num_examples: int
    payload_bytes: int
    metrics: dict[str, float] = field(default_factory=dict)


def decode_update(msg: Message, node: int | None = None) -> ClientUpdate:
    """Parse a ``train`` reply (from ``node``, default: its sender); :class:`ValidationError` if unreadable."""
    node = int(msg.metadata.src_node_id) if node is None else node
    if msg.has_error():
        raise ValidationError("client_error", f"node {node} replied with error: {msg.error.reason}")
    content = msg.content
    try:
        arrays = content.array_records[DELTA]
        metrics = {k: float(v) for k, v in dict(content[METRICS]).items()}  # type: ignore[arg-type]
        backbone = str(content[META]["backbone-hash"])
        delta = arrays.to_torch_state_dict()
        payload = int(arrays.count_bytes())
        num_examples = int(metrics["num-examples"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValidationError("malformed", f"node {node} sent an unreadable update: {exc!r}") from None
    return ClientUpdate(node, delta, backbone, num_examples, payload, metrics)


def payload_nbytes(content: RecordDict) -> int:
    """Bytes of the ArrayRecords in a message's content (what dominates the wire size)."""
    return sum(int(r.count_bytes()) for r in content.array_records.values())
