"""What travels in a fedge Flower message: adapter tensors only, plus small typed metadata.

Server -> client (``train`` / ``evaluate``):
    ``config``  ConfigRecord: round, backbone hash, adapter specs (JSON), the round's hyperparameters and
                ``global``, the round's global adapter tensors (packed, see below)
Client -> server (``train`` reply):
    ``meta``    ConfigRecord: backbone hash the client trained on and ``delta``, ``new - global`` per
                adapter tensor (packed)
    ``metrics`` MetricRecord: ``num-examples``, ``eps-spent``, ``train-loss``, ``compute-s``, ...
Client -> server (``evaluate`` reply):
    ``metrics`` MetricRecord: ``num-examples`` and the task's metrics (macro/micro AP or accuracy)

Tensors travel *packed*: the safetensors serialisation of all of them as one ``bytes`` value. Flower 1.42
moves every record and array of a message as a separate object, one HTTPS request each on every hop
(ServerApp -> SuperLink -> SuperNode -> ClientApp and back), and pushes a reply's objects one after the
other. One ArrayRecord per tensor (20 for FiLM on the small ResNet, ~100 for LoRA on a ViT) cost seconds per
round; a train message is now 2 objects and a reply 3. safetensors also checks the names, dtypes and shapes
it reads.

Shared by ``fedge.server`` and ``fedge.client`` so that both ends agree on names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import safetensors.torch
import torch
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedge.adapters import AdapterState
from fedge.adapters.spec import specs_from_json, specs_to_json
from fedge.errors import ValidationError

GLOBAL, CONFIG, DELTA, META, METRICS = "global", "config", "delta", "meta", "metrics"


def pack(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """The safetensors bytes of ``tensors``."""
    return safetensors.torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def unpack(blob: object) -> dict[str, torch.Tensor]:
    """Inverse of :func:`pack`; ``ValueError`` if ``blob`` is not a packed tensor mapping."""
    if not isinstance(blob, bytes):
        raise ValueError(f"packed tensors must be bytes, got {type(blob).__name__}")
    try:
        return dict(safetensors.torch.load(blob))
    except Exception as exc:  # safetensors raises its own (Rust) error type for corrupt bytes
        raise ValueError(f"corrupt packed tensors: {exc}") from None


def encode_global(state: AdapterState, round_num: int, hparams: Mapping[str, Any]) -> RecordDict:
    """Content of a server -> client message for ``state`` in round ``round_num``."""
    return RecordDict({CONFIG: ConfigRecord({**dict(hparams), "round": round_num,
                                             "backbone-hash": state.backbone_hash,
                                             "specs": specs_to_json(state.specs), GLOBAL: pack(state)})})


def decode_global(content: RecordDict) -> tuple[AdapterState, dict[str, Any]]:
    """Inverse of :func:`encode_global` (on the client)."""
    cfg = dict(content[CONFIG])
    tensors = unpack(cfg.pop(GLOBAL))
    state = AdapterState(tensors, specs_from_json(str(cfg["specs"])), str(cfg["backbone-hash"]))
    return state, cfg


def encode_update(delta: Mapping[str, torch.Tensor], backbone_hash: str, metrics: Mapping[str, float]) -> RecordDict:
    """Content of a client's ``train`` reply."""
    return RecordDict({META: ConfigRecord({"backbone-hash": backbone_hash, DELTA: pack(delta)}),
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
        meta = content.config_records[META]
        metrics = {k: float(v) for k, v in dict(content[METRICS]).items()}  # type: ignore[arg-type]
        backbone = str(meta["backbone-hash"])
        blob = meta[DELTA]
        delta = unpack(blob)
        payload = len(blob)  # type: ignore[arg-type]
        num_examples = int(metrics["num-examples"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValidationError("malformed", f"node {node} sent an unreadable update: {exc!r}") from None
    return ClientUpdate(node, delta, backbone, num_examples, payload, metrics)


def payload_nbytes(content: RecordDict) -> int:
    """Bytes of the packed tensors in a message's content (what dominates the wire size)."""
    return sum(len(v) for r in content.config_records.values() for k, v in r.items()
               if k in (GLOBAL, DELTA) and isinstance(v, bytes))
