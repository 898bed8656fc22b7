"""Load pretrained weights from local files in torchvision/timm state-dict layout (nothing downloads)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fedge.errors import DataError

# BatchNorm running statistics have no GroupNorm counterpart; they are dropped on load.
_DROPPED_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
_PREFIXES = ("module.", "model.", "_module.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file or a torch checkpoint (``weights_only``; nested ``state_dict``/``model`` keys ok)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: object = load_file(str(path))
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt files raise many different types
        raise DataError(f"cannot read weights from {path}: {exc}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise DataError(f"{path} does not hold a name -> tensor state dict")
    out: dict[str, torch.Tensor] = {}
    for k, v in raw.items():
        if k.endswith(_DROPPED_SUFFIXES):
            continue
        for prefix in _PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_pretrained(model: nn.Module, path: str | Path, skip_classifier: bool = False) -> list[str]:
    """Load local weights into ``model``; returns the names left at their initial values.

    ``skip_classifier`` ignores the file's classifier (e.g. a 1000-class ImageNet ``fc``) when the model has
    another number of classes. Any other missing, unexpected or mis-shaped tensor is an error that names it.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    cls = getattr(model, "classifier_name", "fc")
    if skip_classifier:
        state = {k: v for k, v in state.items() if not k.startswith(cls + ".")}
    unexpected = sorted(set(state) - set(own))
    missing = sorted(k for k in set(own) - set(state) if not (skip_classifier and k.startswith(cls + ".")))
    bad_shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in sorted(set(state) & set(own)) if state[k].shape != own[k].shape]
    if unexpected or missing or bad_shapes:
        hint = " (different classifier size? pass skip_classifier=True)" if any(
            s.startswith(cls + ".") for s in bad_shapes) else ""
        raise DataError(
            f"weights in {path} do not fit {type(model).__name__}: unexpected {unexpected[:5]}, "
            f"missing {missing[:5]}, shape mismatches {bad_shapes[:5]}{hint}"
        )
    model.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in state.items()}})
    return sorted(set(own) - set(state))
