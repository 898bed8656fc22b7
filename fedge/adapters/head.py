"""Head: a new trainable classifier in place of the backbone's own (multi-class or multi-label).

The head is a plain ``nn.Linear``; multi-label only changes the loss (sigmoid/BCE instead of softmax/CE),
which the training loop reads from the spec. Merging is the identity.
"""

from __future__ import annotations

import torch
from torch import nn


def classifier_name(model: nn.Module) -> str:
    """The attribute that holds a model's classifier (zoo models declare ``classifier_name``)."""
    name = getattr(model, "classifier_name", None)
    if name is None:
        for candidate in ("fc", "head", "classifier"):
            if isinstance(getattr(model, candidate, None), nn.Linear):
                return candidate
        raise TypeError(f"{type(model).__name__} declares no classifier_name and has no fc/head/classifier Linear")
    return str(name)


def new_head(model: nn.Module, num_classes: int) -> nn.Linear:
    """A trainable classifier with the backbone's feature width.

    When the backbone's own classifier already has ``num_classes`` outputs it is the starting point (a copy),
    so adapting the head never starts below the pretrained model; otherwise the head is freshly initialised.
    """
    old = getattr(model, classifier_name(model))
    if not isinstance(old, nn.Linear):
        raise TypeError(f"the classifier {classifier_name(model)!r} is a {type(old).__name__}, expected nn.Linear")
    head = nn.Linear(old.in_features, num_classes, bias=True).to(old.weight.device)
    if old.out_features == num_classes:
        with torch.no_grad():
            head.weight.copy_(old.weight)
            if old.bias is not None:
                head.bias.copy_(old.bias)
            else:
                head.bias.zero_()
    return head
