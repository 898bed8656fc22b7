"""Run every TTA method over the same stream and measure it: no-adapt, LAME, Tent, cloud-edge (CEMA-style).

Accuracy is online: each batch is scored with the predictions made *before* that batch is used to adapt.
Cloud-edge runs the real protocol: a gRPC service on loopback (``AdaptationService`` + ``CloudAdapter``) and
an :class:`~fedge.edge.tta.device.EdgeDevice` around the ONNX Runtime bundle; bytes are the serialised sizes
of every request and reply.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedge.edge.tta.distill import CloudConfig
from fedge.edge.tta.lame import lame
from fedge.edge.tta.selection import SelectionConfig
from fedge.edge.tta.streams import Stream
from fedge.edge.tta.task import to_input
from fedge.edge.tta.tent import Tent


@dataclass(frozen=True)
class RunConfig:
    """Batch size and the methods' hyperparameters (the same for every stream and severity)."""

    batch_size: int = 50
    tent_lr: float = 1e-3
    lame_k: int = 5
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    cloud: CloudConfig = field(default_factory=CloudConfig)


def _acc(pred: list[np.ndarray], stream: Stream) -> float:
    return float((np.concatenate(pred) == stream.labels).mean())


def run_no_adapt(bundle: str | Path, stream: Stream, cfg: RunConfig) -> dict[str, Any]:
    from fedge.edge.runtime import EdgeModel

    model = EdgeModel(bundle, verify=False)
    pred = [model.run(model.preprocess(x[:, None])).argmax(1) for x, _ in stream.batches(cfg.batch_size)]
    return {"accuracy": _acc(pred, stream)}


@torch.no_grad()
def run_lame(edge: Any, stream: Stream, cfg: RunConfig) -> dict[str, Any]:
    """Output-only on-device refinement; needs the model's features next to its logits."""
    pred = []
    for x, _ in stream.batches(cfg.batch_size):
        xt = torch.from_numpy(to_input(x))
        feats = edge.forward_features(xt)
        logits = edge.fc(feats) if hasattr(edge, "fc") else edge(xt)
        pred.append(lame(logits.numpy(), feats.numpy(), k=cfg.lame_k).argmax(1))
    return {"accuracy": _acc(pred, stream), "backprop_on_device": False}


def run_tent(edge: nn.Module, stream: Stream, cfg: RunConfig) -> dict[str, Any]:
    """Tent on the edge model (backprop: a reference a phone cannot run)."""
    tent = Tent(edge, lr=cfg.tent_lr)
    pred = [tent.step(to_input(x)).argmax(1) for x, _ in stream.batches(cfg.batch_size)]
    return {"accuracy": _acc(pred, stream), "backprop_on_device": True}


@torch.no_grad()
def run_model(model: nn.Module, stream: Stream, cfg: RunConfig) -> dict[str, Any]:
    """A torch model as-is (e.g. the foundation model without adaptation, for context)."""
    pred = [model(torch.from_numpy(to_input(x))).argmax(1).numpy() for x, _ in stream.batches(cfg.batch_size)]
    return {"accuracy": _acc(pred, stream)}


def run_cloud_edge(bundle: str | Path, edge: nn.Module, foundation: nn.Module, stream: Stream,
                   cfg: RunConfig, tls: tuple[bytes, bytes] | None = None) -> dict[str, Any]:
    """The full protocol on loopback: a fresh service and device per stream."""
    from fedge.adapters import backbone_hash
    from fedge.edge.runtime import EdgeModel
    from fedge.edge.tta.cloud import AdaptationService, ParameterStore, serve
    from fedge.edge.tta.device import CloudClient, EdgeDevice
    from fedge.edge.tta.distill import CloudAdapter
    from fedge.edge.tta.selection import Selector

    adapter = CloudAdapter(foundation, edge, cfg=cfg.cloud)
    service = AdaptationService(adapter, {"bench": "token"}, ParameterStore(None, backbone_hash(edge)))
    server, port = serve(service, "127.0.0.1:0", tls)
    client = CloudClient(f"127.0.0.1:{port}", "bench", "token", root_cert=tls[0] if tls else None)
    model = EdgeModel(bundle, verify=False)
    device = EdgeDevice(model, Selector(len(model.labels), cfg.selection), client)
    t0 = time.perf_counter()
    try:
        pred = [device.step(x[:, None]).argmax(1) for x, _ in stream.batches(cfg.batch_size)]
    finally:
        client.close()
        server.stop(None)
    report = device.report()
    return {"accuracy": _acc(pred, stream), "upload_fraction": report["upload_fraction"],
            "bytes_up": report["bytes_up"], "bytes_down": report["bytes_down"], "versions": report["version"],
            "reasons": report["reasons"], "backprop_on_device": False,
            "seconds": time.perf_counter() - t0}
