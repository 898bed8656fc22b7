"""FiLM: a learned per-channel scale and shift on the output of a frozen normalization layer.

``y = norm(x) * scale + shift``. Merging folds scale and shift into the norm's affine parameters
(``w' = w * scale``, ``b' = b * scale + shift``), so the exported model has no extra op.
"""

from __future__ import annotations

from typing import Any

import torch
from opacus.grad_sample import register_grad_sampler
from torch import nn

#: normalization layers FiLM knows how to wrap, with the dimension that holds their channels
NORM_CHANNEL_DIM: dict[type[nn.Module], int] = {nn.GroupNorm: 1, nn.LayerNorm: -1}


class FiLM(nn.Module):
    """Per-channel affine modulation; ``channel_dim`` is 1 for NCHW maps and -1 for tokens.

    ``per_sample`` is set by ``fedge.privacy`` for the duration of a DP-SGD run:

    * ``None``: plain autograd.
    * ``"hooks"``: Opacus' hooks take this layer's per-sample gradients (``_film_grad_sample``); backward
      skips the batch-summed gradient of ``scale`` and ``shift``, which Opacus' DP optimizer replaces anyway.
    * ``"inline"``: no Opacus hooks on this layer; backward itself writes the per-sample gradients to
      ``scale.grad_sample`` and ``shift.grad_sample`` in Opacus' format (see :meth:`_write_grad_sample`).
      That saves the activation capture and the full-backward-hook wrappers that Opacus puts around
      every hooked layer, which is most of the DP overhead of a FiLM-only model.
    """

    def __init__(self, num_channels: int, channel_dim: int = 1) -> None:
        super().__init__()
        self.channel_dim = channel_dim
        self.scale = nn.Parameter(torch.ones(num_channels))
        self.shift = nn.Parameter(torch.zeros(num_channels))
        self.per_sample = None

    @property
    def per_sample(self) -> str | None:
        return self._per_sample

    @per_sample.setter
    def per_sample(self, mode: str | None) -> None:
        self._per_sample = mode
        self._pending = 0  # inline forwards whose backward has not run yet

    def _view(self, p: torch.Tensor, ndim: int) -> torch.Tensor:
        if self.channel_dim == -1:
            return p
        shape = [1] * ndim
        shape[self.channel_dim] = -1
        return p.view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self._view(self.scale, x.dim()), self._view(self.shift, x.dim())
        if self.per_sample is None or not torch.is_grad_enabled():
            return x * scale + shift
        if self.per_sample == "inline":
            if self._pending > 0:
                # A second use before backward would need its per-sample gradients summed, not stacked.
                raise RuntimeError("a FiLM layer was applied twice in one forward pass; use grad_sample_mode='hooks'")
            self._pending += 1
            return _PerSampleFiLM.apply(x, scale, shift, self)  # type: ignore[no-any-return]
        return _PerSampleFiLM.apply(x, scale, shift, None)  # type: ignore[no-any-return]

    def _write_grad_sample(self, x: torch.Tensor, grad: torch.Tensor) -> None:
        """Store per-sample gradients the way Opacus' hooks do for ``loss_reduction="mean"``.

        ``grad`` is the gradient of the batch-mean loss, so each example's own gradient is ``grad * n``
        (Opacus scales the backprops; scaling the ``[n, C]`` sums is the same and far smaller). A second
        backward before the optimizer step (``BatchMemoryManager``'s physical batches) appends, as in Opacus.
        """
        self._pending -= 1
        d_scale, d_shift = per_sample_sums(x, grad, self.channel_dim)
        n = grad.shape[0]
        for p, gs in ((self.scale, d_scale), (self.shift, d_shift)):
            if not p.requires_grad:
                continue
            old = getattr(p, "grad_sample", None)
            new = gs * n
            if old is None:
                p.grad_sample = new  # type: ignore[attr-defined]
            elif isinstance(old, list):
                old.append(new)
            else:
                p.grad_sample = [old, new]  # type: ignore[attr-defined]


class _PerSampleFiLM(torch.autograd.Function):
    """``x * scale + shift`` whose backward returns the input gradient only.

    With a ``film`` it also writes that layer's per-sample gradients (``FiLM.per_sample == "inline"``).
    """

    @staticmethod
    def forward(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, film: FiLM | None) -> torch.Tensor:
        return x * scale + shift

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        x, scale, _, film = inputs
        ctx.film = film
        ctx.save_for_backward(x if film is not None else None, scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        x, scale = ctx.saved_tensors
        if ctx.film is not None:
            ctx.film._write_grad_sample(x, grad)
        return (grad * scale if ctx.needs_input_grad[0] else None), None, None, None


def per_sample_sums(x: torch.Tensor, g: torch.Tensor, channel_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum g * x, sum g)`` over every dim but batch and channel, as ``[batch, channels]``.

    One fused multiply-reduce (``vecdot``) instead of ``(x * g).sum(...)``, which writes a full-size temporary.
    """
    cdim = channel_dim % x.dim()
    if x.dim() == 2:
        return x * g, g
    if cdim == 1:  # N, C, *spatial
        xf, gf = x.flatten(2), g.flatten(2)
        return torch.linalg.vecdot(gf, xf), gf.sum(-1)
    xf, gf = x.flatten(1, -2), g.flatten(1, -2)  # N, *tokens, C
    return torch.linalg.vecdot(gf, xf, dim=1), gf.sum(1)


@register_grad_sampler(FiLM)
def _film_grad_sample(
    layer: FiLM, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients for Opacus: sum over every dim but batch and channel."""
    d_scale, d_shift = per_sample_sums(activations[0], backprops, layer.channel_dim)
    grads: dict[nn.Parameter, torch.Tensor] = {}
    if layer.scale.requires_grad:
        grads[layer.scale] = d_scale
    if layer.shift.requires_grad:
        grads[layer.shift] = d_shift
    return grads


class FiLMNorm(nn.Module):
    """A frozen normalization layer followed by FiLM; ``merge``/``unmerge`` fold FiLM in and out exactly."""

    def __init__(self, norm: nn.GroupNorm | nn.LayerNorm) -> None:
        super().__init__()
        channel_dim = NORM_CHANNEL_DIM[type(norm)]
        channels = norm.num_channels if isinstance(norm, nn.GroupNorm) else int(norm.normalized_shape[-1])
        self.norm: nn.GroupNorm | nn.LayerNorm = norm
        self.film: FiLM = FiLM(channels, channel_dim)
        self.merged = False
        self._saved: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        return y if self.merged else self.film(y)

    def merged_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The norm's affine parameters with FiLM folded in."""
        scale, shift = self.film.scale.detach(), self.film.shift.detach()
        w = self.norm.weight.detach() if self.norm.weight is not None else torch.ones_like(scale)
        b = self.norm.bias.detach() if self.norm.bias is not None else torch.zeros_like(shift)
        return w * scale, b * scale + shift

    def merge(self) -> None:
        """Fold FiLM into the norm in place (the originals are kept so :meth:`unmerge` is exact)."""
        if self.merged:
            return
        weight, bias = self.norm.weight, self.norm.bias
        if weight is None or bias is None:
            raise ValueError("cannot merge FiLM in place into a norm without affine parameters; use fedge.adapters.merge")
        w, b = self.merged_affine()
        self._saved = (weight.detach().clone(), bias.detach().clone())
        with torch.no_grad():
            weight.copy_(w)
            bias.copy_(b)
        self.merged = True

    def unmerge(self) -> None:
        """Restore the norm's original affine parameters bit-exactly."""
        if not self.merged or self._saved is None or self.norm.weight is None or self.norm.bias is None:
            return
        with torch.no_grad():
            self.norm.weight.copy_(self._saved[0])
            self.norm.bias.copy_(self._saved[1])
        self._saved = None
        self.merged = False

    def to_plain(self) -> nn.Module:
        """A new plain norm layer (same type and eps) whose affine parameters include FiLM."""
        w, b = self.merged_affine()
        plain: nn.GroupNorm | nn.LayerNorm
        if isinstance(self.norm, nn.GroupNorm):
            plain = nn.GroupNorm(self.norm.num_groups, self.norm.num_channels, eps=self.norm.eps)
        else:
            plain = nn.LayerNorm(self.norm.normalized_shape, eps=self.norm.eps)
        with torch.no_grad():
            plain.weight.copy_(w.reshape(plain.weight.shape))
            plain.bias.copy_(b.reshape(plain.bias.shape))
        return plain.to(self.film.scale.device)


def wrap(module: nn.Module) -> FiLMNorm:
    """Wrap a supported normalization layer; other layers are a caller error."""
    if not isinstance(module, (nn.GroupNorm, nn.LayerNorm)) or type(module) not in NORM_CHANNEL_DIM:
        raise TypeError(f"FiLM wraps {[t.__name__ for t in NORM_CHANNEL_DIM]}, not {type(module).__name__}")
    return FiLMNorm(module)
