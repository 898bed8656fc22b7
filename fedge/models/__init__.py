"""Model zoo: GroupNorm ResNets and a small ViT, all Opacus-compatible (no BatchNorm)."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from fedge.errors import ConfigError
from fedge.models.resnet import ResNetGN, resnet18_gn, resnet_gn_small
from fedge.models.vit import VisionTransformer, vit_tiny
from fedge.models.weights import load_pretrained, read_state_dict

REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "resnet_gn_small": resnet_gn_small,
    "resnet18_gn": resnet18_gn,
    "vit_tiny": vit_tiny,
}
DEFAULT_ARCH = "resnet_gn_small"


def create_model(name: str = DEFAULT_ARCH, **kwargs: object) -> nn.Module:
    """Build a zoo model by name (``num_classes``, ``in_chans`` and model-specific options as keywords)."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](**kwargs)


def create_backbone(name: str, num_classes: int, in_chans: int, image_size: int) -> nn.Module:
    """A zoo model for ``in_chans x image_size x image_size`` inputs (the size matters only to models that
    need it, such as the ViT's position embeddings; the ResNets pool globally)."""
    kwargs: dict[str, object] = {"num_classes": num_classes, "in_chans": in_chans}
    if name in REGISTRY and "img_size" in inspect.signature(REGISTRY[name]).parameters:
        kwargs["img_size"] = image_size
    return create_model(name, **kwargs)


__all__ = [
    "DEFAULT_ARCH",
    "REGISTRY",
    "ResNetGN",
    "VisionTransformer",
    "create_backbone",
    "create_model",
    "load_pretrained",
    "read_state_dict",
    "resnet18_gn",
    "resnet_gn_small",
    "vit_tiny",
]
