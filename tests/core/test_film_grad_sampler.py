"""FiLM's Opacus grad sampler gives the same per-sample gradients as one backward pass per example."""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule

from fedge.adapters import adapter_parameters, inject, parse_adapter_kinds
from fedge.models import create_model


@pytest.mark.parametrize("arch", ["resnet_gn_small", "vit_tiny"])
@pytest.mark.parametrize("kinds", ["film", "film+lora+head"])
def test_per_sample_gradients_match_autograd(arch: str, kinds: str) -> None:
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_chans=1)
    inject(model, parse_adapter_kinds(kinds, 10, multilabel=True))
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.add_(0.05 * torch.randn_like(p))
    x, y = torch.rand(5, 1, 32, 32), (torch.rand(5, 10) < 0.3).float()
    lossf = torch.nn.BCEWithLogitsLoss(reduction="sum")

    expected = []
    for i in range(len(x)):
        model.zero_grad()
        lossf(model(x[i : i + 1]), y[i : i + 1]).backward()
        expected.append([p.grad.detach().clone() for p in adapter_parameters(model)])
    model.zero_grad()

    gsm = GradSampleModule(model, loss_reduction="sum")  # raises if a trainable module lacks a sampler
    lossf(gsm(x), y).backward()
    for j, p in enumerate(adapter_parameters(model)):
        per_sample = p.grad_sample
        assert per_sample.shape == (len(x), *p.shape)
        for i in range(len(x)):
            torch.testing.assert_close(per_sample[i], expected[i][j], rtol=1e-4, atol=1e-5)
    gsm._close()
