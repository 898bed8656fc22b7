"""Tent and the cloud adapter touch only norm affines; the published names are the bundle's adaptable inputs."""

from __future__ import annotations

import numpy as np
import torch

from fedge.edge.export import norm_affine_names
from fedge.edge.tta.distill import CloudAdapter, CloudConfig
from fedge.edge.tta.task import TinyCNN
from fedge.edge.tta.tent import Tent, norm_affine_parameters, softmax_entropy


def _data(n: int = 32) -> np.ndarray:
    return np.random.default_rng(0).random((n, 1, 28, 28), dtype=np.float32)


def _frozen_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    affine = set(norm_affine_parameters(model))
    return {k: v.clone() for k, v in model.state_dict().items() if k not in affine}


def test_tent_lowers_entropy_and_updates_only_norm_affines() -> None:
    torch.manual_seed(0)
    model = TinyCNN()
    before = _frozen_state(model)
    tent = Tent(model, lr=1e-2)
    x = _data()
    first = softmax_entropy(torch.from_numpy(tent.step(x))).mean()
    for _ in range(10):
        tent.step(x)
    last = softmax_entropy(tent.model(torch.from_numpy(x))).mean()
    assert last < first
    after = _frozen_state(tent.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(norm_affine_parameters(model)["features.1.weight"],
                           norm_affine_parameters(tent.model)["features.1.weight"])  # a copy was adapted


def test_cloud_adapter_distils_towards_the_foundation() -> None:
    torch.manual_seed(0)
    edge, foundation = TinyCNN(), TinyCNN(widths=(32, 64, 128), groups=8)
    adapter = CloudAdapter(foundation, edge, cfg=CloudConfig(edge_steps=5, edge_lr=1e-2))
    x = torch.from_numpy(_data(64))

    def kl() -> float:
        with torch.no_grad():
            t, s = adapter.foundation(x).log_softmax(1), adapter.edge(x).log_softmax(1)
            return float((t.exp() * (t - s)).sum(1).mean())

    start = kl()
    for _ in range(5):
        adapter.adapt(x.numpy())
    assert kl() < start
    frozen = _frozen_state(edge)
    assert all(torch.equal(frozen[k], v) for k, v in _frozen_state(adapter.edge).items())
    params = adapter.edge_params()
    assert list(params) == norm_affine_names(edge)  # exactly the bundle's overridable inputs
    assert all(v.dtype == np.float32 for v in params.values())
    restored = CloudAdapter(foundation, edge)
    restored.load_params(params, adapter.foundation_params())
    assert all(np.array_equal(restored.edge_params()[k], params[k]) for k in params)
