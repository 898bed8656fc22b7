"""The adapter spec: one frozen dataclass shared by every adapter kind, serialised with the tensors."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from fedge.errors import ConfigError

KINDS = ("film", "lora", "head", "full")


@dataclass(frozen=True)
class AdapterSpec:
    """What to inject into a frozen backbone.

    ``targets`` are fnmatch patterns over module names; empty means the kind's default targets
    (FiLM: every GroupNorm/LayerNorm; LoRA: every Linear/Conv2d except the classifier; head: the
    model's classifier attribute). ``full`` is the full fine-tuning baseline: every backbone tensor is
    trainable and travels as "adapter" state (what adapters are compared against, not an adapter).
    """

    kind: str
    targets: tuple[str, ...] = ()
    # LoRA
    rank: int = 4
    alpha: float = 8.0
    # head
    num_classes: int = 0
    multilabel: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown adapter kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.kind == "lora" and (self.rank < 1 or self.alpha <= 0):
            raise ConfigError(f"LoRA needs rank >= 1 and alpha > 0, got rank={self.rank}, alpha={self.alpha}")
        if self.kind == "head" and self.num_classes < 1:
            raise ConfigError("a head adapter needs num_classes >= 1")
        object.__setattr__(self, "targets", tuple(self.targets))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> AdapterSpec:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown adapter spec fields: {sorted(unknown)}")
        return cls(**data)  # type: ignore[arg-type]


def specs_to_json(specs: Sequence[AdapterSpec]) -> str:
    """Serialise specs as canonical JSON (stable key order), as stored next to adapter tensors."""
    return json.dumps([s.to_dict() for s in specs], sort_keys=True, separators=(",", ":"))


def specs_from_json(text: str) -> tuple[AdapterSpec, ...]:
    """Inverse of :func:`specs_to_json`."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"adapter spec metadata is not JSON: {exc}") from None
    return tuple(AdapterSpec.from_dict({**d, "targets": tuple(d.get("targets", ()))}) for d in raw)


def parse_adapter_kinds(text: str, num_classes: int, multilabel: bool) -> tuple[AdapterSpec, ...]:
    """Turn a CLI string such as ``"film+head"`` or ``"lora"`` into specs.

    Without ``head`` the backbone's own (frozen) classifier is kept, so ``film`` alone adapts only the
    per-channel scales and shifts.
    """
    kinds = [k.strip() for k in text.split("+") if k.strip()]
    if not kinds or any(k not in KINDS for k in kinds) or len(set(kinds)) != len(kinds):
        raise ConfigError(f"adapter kinds {text!r}: use '+'-joined distinct names from {', '.join(KINDS)}")
    return tuple(
        AdapterSpec(kind=k, num_classes=num_classes, multilabel=multilabel) if k == "head" else AdapterSpec(kind=k)
        for k in kinds
    )
