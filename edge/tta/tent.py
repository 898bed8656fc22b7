"""Tent (Wang et al., ICLR 2021) on the edge model: entropy minimisation of the norm affine parameters.

The reference that needs backprop on the device: useful to compare against, not something a phone runs.
Online: each batch is predicted with the current parameters, then one optimiser step is taken on it.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

NORM_TYPES = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d)


def norm_affine_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name -> parameter of every normalization layer's weight and bias (the same names the ONNX export keeps)."""
    out = {}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, NORM_TYPES):
            for p_name in ("weight", "bias"):
                p = getattr(mod, p_name, None)
                if p is not None:
                    out[f"{mod_name}.{p_name}" if mod_name else p_name] = p
    return out


def configure_affine_only(model: nn.Module) -> list[nn.Parameter]:
    """Freeze everything but the norm affines; return those (the parameters Tent and CEMA adapt)."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(norm_affine_parameters(model).values())
    for p in params:
        p.requires_grad_(True)
    return params


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample entropy of ``softmax(logits)``."""
    logp = logits.log_softmax(1)
    return -(logp.exp() * logp).sum(1)


class Tent:
    """Online Tent on a private copy of ``model``."""

    def __init__(self, model: nn.Module, lr: float = 1e-3, steps: int = 1) -> None:
        self.model = copy.deepcopy(model).eval()  # GroupNorm has no running stats: eval == train here
        self.opt = torch.optim.Adam(configure_affine_only(self.model), lr=lr)
        self.steps = steps

    def step(self, x: np.ndarray) -> np.ndarray:
        """Logits for the preprocessed batch ``x`` (before the update), then ``steps`` entropy steps on it."""
        xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        for i in range(self.steps):
            logits = self.model(xt)
            if i == 0:
                out = logits.detach().numpy()
            loss = softmax_entropy(logits).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return out
