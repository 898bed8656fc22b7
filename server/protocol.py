"""What travels in a fedge Flower message: adapter tensors only, plus small typed metadata.

Server -> client (``train`` / ``evaluate``):
    ``global``  ArrayRecord of the round's global adapter tensors (packed, see below)
    ``config``  ConfigRecord: round, backbone hash, adapter specs (JSON) and the round's hyperparameters
Client -> server (``train`` reply):
    ``delta``   ArrayRecord of ``new - global`` per adapter tensor (packed)
    ``meta``    ConfigRecord: backbone hash the client trained on
    ``metrics`` MetricRecord: ``num-examples``, ``eps-spent``, ``train-loss``, ``compute-s``, ...
Client -> server (``evaluate`` reply):
    ``metrics`` MetricRecord: ``num-examples`` and the task's metrics (macro/micro AP or accuracy)

Tensors travel *packed*: one Array holding the safetensors serialisation of all of them. Flower 1.42 moves
every Array of a message as a separate object, one HTTPS request each on the Fleet API; one request per
adapter tensor (20 for FiLM on the small ResNet, ~100 for LoRA on a ViT) cost seconds per round on a busy
machine, while the packed form needs one. safetensors also checks the names, dtypes and shapes it reads.

Shared by ``fedge.server`` and ``fedge.client`` so that both ends agree on names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import safetensors.torch
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedge.adapters import AdapterState
from fedge.adapters.spec import specs_from_json, specs_to_json
from fedge.errors import ValidationError

GLOBAL, CONFIG, DELTA, META, METRICS = "global", "config", "delta", "meta", "metrics"
PACKED = "safetensors"  #: the one Array of a packed ArrayRecord


def pack(tensors: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """An ArrayRecord with one Array: the safetensors bytes of ``tensors``."""
    blob = safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    return ArrayRecord({PACKED: Array(np.frombuffer(blob, dtype=np.uint8))})


def unpack(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack`; ``ValueError`` if the record is not a packed tensor mapping."""
    if list(record.keys()) != [PACKED]:
        raise ValueError(f"expected one {PACKED!r} array, got {sorted(record.keys())[:5]}")
    blob = record[PACKED].numpy()
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise ValueError(f"packed tensors must be a 1-d uint8 array, got {blob.dtype} {blob.shape}")
    try:
        return dict(safetensors.torch.load(blob.tobytes()))
    except Exception as exc:  # safetensors raises its own (Rust) error type for corrupt bytes
        raise ValueError(f"corrupt packed tensors: {exc}") from None


def encode_global(state: AdapterState, round_num: int, hparams: Mapping[str, Any]) -> RecordDict:
    """Content of a server -> client message for ``state`` in round ``round_num``."""
    cfg = ConfigRecord({**dict(hparams), "round": round_num, "backbone-hash": state.backbone_hash,
                        "specs": specs_to_json(state.specs)})
    return RecordDict({GLOBAL: pack(state), CONFIG: cfg})


def decode_global(content: RecordDict) -> tuple[AdapterState, dict[str, Any]]:
    """Inverse of :func:`encode_global` (on the client)."""
    cfg = dict(content[CONFIG])
    tensors = unpack(content.array_records[GLOBAL])
    state = AdapterState(tensors, specs_from_json(str(cfg["specs"])), str(cfg["backbone-hash"]))
    return state, cfg


def encode_update(delta: Mapping[str, torch.Tensor], backbone_hash: str, metrics: Mapping[str, float]) -> RecordDict:
    """Content of a client's ``train`` reply."""
    return RecordDict({DELTA: pack(delta),
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
        delta = unpack(arrays)
        payload = int(arrays.count_bytes())
        num_examples = int(metrics["num-examples"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValidationError("malformed", f"node {node} sent an unreadable update: {exc!r}") from None
    return ClientUpdate(node, delta, backbone, num_examples, payload, metrics)


def payload_nbytes(content: RecordDict) -> int:
    """Bytes of the ArrayRecords in a message's content (what dominates the wire size)."""
    return sum(int(r.count_bytes()) for r in content.array_records.values())
