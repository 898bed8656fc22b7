"""FiLM's Opacus grad sampler gives the same per-sample gradients as one backward pass per example."""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule

from fedge.adapters import adapter_parameters, inject, parse_adapter_kinds
from fedge.adapters.film import FiLM, per_sample_sums
from fedge.models import create_model

LOSS = torch.nn.BCEWithLogitsLoss(reduction="sum")


def adapted_with_reference(arch: str, kinds: str, n: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor,
                                                                    list[list[torch.Tensor]]]:
    """A model with perturbed ``kinds`` adapters, a batch, and each example's adapter gradients by autograd."""
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_chans=1)
    inject(model, parse_adapter_kinds(kinds, 10, multilabel=True))
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.add_(0.05 * torch.randn_like(p))
    x, y = torch.rand(n, 1, 32, 32), (torch.rand(n, 10) < 0.3).float()
    expected = []
    for i in range(n):
        model.zero_grad()
        LOSS(model(x[i : i + 1]), y[i : i + 1]).backward()
        expected.append([p.grad.detach().clone() for p in adapter_parameters(model)])
    model.zero_grad(set_to_none=True)
    return model, x, y, expected


@pytest.mark.parametrize("arch", ["resnet_gn_small", "vit_tiny"])
@pytest.mark.parametrize("kinds", ["film", "film+lora+head"])
def test_per_sample_gradients_match_autograd(arch: str, kinds: str) -> None:
    model, x, y, expected = adapted_with_reference(arch, kinds, 5)
    gsm = GradSampleModule(model, loss_reduction="sum")  # raises if a trainable module lacks a sampler
    LOSS(gsm(x), y).backward()
    for j, p in enumerate(adapter_parameters(model)):
        per_sample = p.grad_sample
        assert per_sample.shape == (len(x), *p.shape)
        for i in range(len(x)):
            torch.testing.assert_close(per_sample[i], expected[i][j], rtol=1e-4, atol=1e-5)
    gsm._close()


@pytest.mark.parametrize("shape,channel_dim", [((4, 3, 5, 6), 1), ((4, 7, 3), -1), ((4, 3), 1)])
def test_per_sample_sums_match_per_example_autograd(shape: tuple[int, ...], channel_dim: int) -> None:
    """The fused multiply-reduce equals one backward pass per example through ``x * scale + shift``."""
    torch.manual_seed(1)
    film = FiLM(shape[channel_dim], channel_dim)
    x, g = torch.randn(shape), torch.randn(shape)
    d_scale, d_shift = per_sample_sums(x, g, channel_dim)
    for i in range(shape[0]):
        film.zero_grad()
        (film(x[i : i + 1]) * g[i : i + 1]).sum().backward()
        torch.testing.assert_close(d_scale[i], film.scale.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(d_shift[i], film.shift.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["hooks", "inline"])
def test_per_sample_modes_keep_input_grad_and_skip_summed_grad(mode: str) -> None:
    torch.manual_seed(2)
    film = FiLM(3)
    with torch.no_grad():
        film.scale.mul_(1.5)
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    film(x).square().sum().backward()
    expected = x.grad.clone()
    x.grad = None
    film.zero_grad(set_to_none=True)
    film.per_sample = mode
    out = film(x)
    torch.testing.assert_close(out, x * film.scale.view(1, -1, 1, 1) + film.shift.view(1, -1, 1, 1))
    out.square().sum().backward()
    torch.testing.assert_close(x.grad, expected)  # bit-for-bit the same math
    assert film.scale.grad is None and film.shift.grad is None  # Opacus' optimizer fills .grad from .grad_sample
    assert hasattr(film.scale, "grad_sample") == (mode == "inline")
    with torch.no_grad():
        assert not film(x).requires_grad  # no graph under no_grad


@pytest.mark.parametrize("arch", ["resnet_gn_small", "vit_tiny"])
def test_hooks_mode_under_opacus_matches_autograd(arch: str) -> None:
    """With ``per_sample="hooks"`` (fedge.privacy's hooks mode) Opacus' per-sample gradients are unchanged."""
    model, x, y, expected = adapted_with_reference(arch, "film+head", 4)
    films = [m for m in model.modules() if isinstance(m, FiLM)]
    for m in films:
        m.per_sample = "hooks"
    gsm = GradSampleModule(model, loss_reduction="sum")
    LOSS(gsm(x), y).backward()
    for j, p in enumerate(adapter_parameters(model)):
        for i in range(len(x)):
            torch.testing.assert_close(p.grad_sample[i], expected[i][j], rtol=1e-4, atol=1e-5)
    assert all(m.scale.grad is None for m in films)
    gsm._close()


@pytest.mark.parametrize("arch", ["resnet_gn_small", "vit_tiny"])
def test_inline_per_sample_gradients_match_autograd(arch: str) -> None:
    """``per_sample="inline"``: FiLM's own backward writes each example's gradient, in Opacus' format.

    The loss is a batch mean (Opacus' ``loss_reduction="mean"``), so ``grad_sample[i]`` must be the
    gradient of example i's own loss; two backward passes before a step (physical batches) stack as a list.
    """
    model, x, y, expected = adapted_with_reference(arch, "film", 5)
    films = [m for m in model.modules() if isinstance(m, FiLM)]
    for m in films:
        m.per_sample = "inline"
    mean_loss = torch.nn.BCEWithLogitsLoss(reduction="none")
    for part in (slice(0, 3), slice(3, 5)):
        mean_loss(model(x[part]), y[part]).sum(1).mean().backward()
    for j, p in enumerate(adapter_parameters(model)):
        assert isinstance(p.grad_sample, list) and [len(g) for g in p.grad_sample] == [3, 2]
        assert p.grad is None
        per_sample = torch.cat(p.grad_sample)
        for i in range(len(x)):
            torch.testing.assert_close(per_sample[i], expected[i][j], rtol=1e-4, atol=1e-5)


def test_inline_refuses_a_layer_applied_twice() -> None:
    film = FiLM(3)
    film.per_sample = "inline"
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match="applied twice"):
        film(film(x))
    film.per_sample = "inline"  # setting the mode clears the count the refused forward left
    film(x).sum().backward()  # one use per forward is fine, and backward settles the count
    assert film._pending == 0 and film.scale.grad_sample.shape == (2, 3)
