"""LoRA: a trainable low-rank update ``scaling * B @ A`` beside a frozen ``Linear`` or ``Conv2d``.

A and B are plain ``nn.Linear``/``nn.Conv2d`` layers, so Opacus computes their per-sample gradients with
its own samplers. For a convolution, A has the base kernel (and stride, padding, dilation) and B is 1x1,
so ``B @ A`` is a kernel of the base's shape and merges exactly into it.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRALayer(nn.Module):
    """Base layer plus low-rank update; B starts at zero so injection does not change the outputs."""

    def __init__(self, base: nn.Linear | nn.Conv2d, rank: int, alpha: float) -> None:
        super().__init__()
        self.base: nn.Linear | nn.Conv2d = base
        self.rank = rank
        self.scaling = alpha / rank
        if isinstance(base, nn.Linear):
            self.lora_A: nn.Module = nn.Linear(base.in_features, rank, bias=False)
            self.lora_B: nn.Module = nn.Linear(rank, base.out_features, bias=False)
        elif isinstance(base, nn.Conv2d):
            if base.groups != 1:
                raise TypeError("LoRA on grouped convolutions is not supported")
            self.lora_A = nn.Conv2d(
                base.in_channels, rank, base.kernel_size, base.stride, base.padding,  # type: ignore[arg-type]
                base.dilation, bias=False,  # type: ignore[arg-type]
            )
            self.lora_B = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        else:
            raise TypeError(f"LoRA wraps nn.Linear or nn.Conv2d, not {type(base).__name__}")
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.lora_A.to(base.weight.device)
        self.lora_B.to(base.weight.device)
        self.merged = False
        self._saved: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        return y + self.lora_B(self.lora_A(x)) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """``scaling * B @ A`` in the base weight's shape."""
        a, b = self.lora_A.weight.detach(), self.lora_B.weight.detach()  # type: ignore[operator]
        if isinstance(self.base, nn.Linear):
            return (b @ a) * self.scaling
        # b: (out, r, 1, 1), a: (r, in, kh, kw)
        return torch.einsum("or,rikl->oikl", b[:, :, 0, 0], a) * self.scaling

    def merge(self) -> None:
        """Add the update into the base weight in place (the original is kept: :meth:`unmerge` is exact)."""
        if self.merged:
            return
        self._saved = self.base.weight.detach().clone()
        with torch.no_grad():
            self.base.weight.add_(self.delta_weight())
        self.merged = True

    def unmerge(self) -> None:
        """Restore the base weight bit-exactly."""
        if not self.merged or self._saved is None:
            return
        with torch.no_grad():
            self.base.weight.copy_(self._saved)
        self._saved = None
        self.merged = False

    def to_plain(self) -> nn.Module:
        """A new plain layer of the base's type with the update merged in."""
        base = self.base
        plain: nn.Linear | nn.Conv2d
        if isinstance(base, nn.Linear):
            plain = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
        else:
            plain = nn.Conv2d(
                base.in_channels, base.out_channels, base.kernel_size, base.stride,  # type: ignore[arg-type]
                base.padding, base.dilation, base.groups,  # type: ignore[arg-type]
                bias=base.bias is not None, padding_mode=base.padding_mode,
            )
        plain = plain.to(base.weight.device)
        with torch.no_grad():
            w = base.weight.detach() if self.merged else base.weight.detach() + self.delta_weight()
            plain.weight.copy_(w)
            if base.bias is not None and plain.bias is not None:
                plain.bias.copy_(base.bias.detach())
        return plain


def wrap(module: nn.Module, rank: int, alpha: float) -> LoRALayer:
    """Wrap a ``Linear`` or ``Conv2d`` with a LoRA update."""
    return LoRALayer(module, rank, alpha)  # type: ignore[arg-type]
