"""Adapter state: a flat ``name -> tensor`` mapping that carries its specs and the backbone's hash.

Serialised with safetensors (never pickle); the specs and backbone hash travel as metadata, so a file or a
message alone says which backbone it belongs to.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedge.adapters.spec import AdapterSpec, specs_from_json, specs_to_json
from fedge.errors import AdapterMismatchError, DataError

FORMAT_VERSION = "1"


class AdapterState(Mapping[str, torch.Tensor]):
    """Immutable-by-convention mapping of adapter tensors (CPU, contiguous) with specs and backbone hash."""

    def __init__(
        self, tensors: Mapping[str, torch.Tensor], specs: Sequence[AdapterSpec], backbone_hash: str
    ) -> None:
        # always copies: a state is a snapshot and must not alias live parameters
        self._tensors = {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format)
                         for k, v in sorted(tensors.items())}
        self.specs = tuple(specs)
        self.backbone_hash = backbone_hash

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        kinds = "+".join(s.kind for s in self.specs)
        return f"AdapterState({kinds}, {len(self)} tensors, {self.num_parameters()} params, backbone={self.backbone_hash[:12]})"

    def num_parameters(self) -> int:
        return sum(t.numel() for t in self._tensors.values())

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._tensors.values())

    def with_tensors(self, tensors: Mapping[str, torch.Tensor]) -> AdapterState:
        """Same specs and backbone, new tensors (names and shapes are checked)."""
        check_compatible(self, tensors)
        return AdapterState(tensors, self.specs, self.backbone_hash)

    def metadata(self) -> dict[str, str]:
        return {"fedge.format": FORMAT_VERSION, "fedge.specs": specs_to_json(self.specs),
                "fedge.backbone_hash": self.backbone_hash}

    def to_bytes(self) -> bytes:
        return st_save(dict(self._tensors), metadata=self.metadata())

    @classmethod
    def from_bytes(cls, data: bytes) -> AdapterState:
        try:
            tensors = st_load(data)
            meta = read_metadata(data)
        except (SafetensorError, ValueError, OSError) as exc:
            raise DataError(f"not an adapter state (safetensors expected): {exc}") from None
        if meta.get("fedge.format") != FORMAT_VERSION or "fedge.specs" not in meta:
            raise DataError("safetensors data carries no fedge adapter metadata (format, specs, backbone hash)")
        return cls(tensors, specs_from_json(meta["fedge.specs"]), meta["fedge.backbone_hash"])

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file + rename) so a crash never leaves half a file."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(self.to_bytes())
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> AdapterState:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"adapter file {path} does not exist")
        return cls.from_bytes(path.read_bytes())


def read_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (its header only is parsed)."""
    if len(data) < 8:
        raise ValueError("truncated header")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError("truncated header")
    header = json.loads(data[8 : 8 + n])
    return dict(header.get("__metadata__", {}))


def check_compatible(reference: AdapterState, tensors: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`AdapterMismatchError` unless ``tensors`` has exactly the reference's names and shapes."""
    missing = sorted(set(reference) - set(tensors))
    unknown = sorted(set(tensors) - set(reference))
    if missing or unknown:
        raise AdapterMismatchError(f"adapter tensors differ: missing {missing[:5]}, unknown {unknown[:5]}")
    for name, ref in reference.items():
        if tuple(tensors[name].shape) != tuple(ref.shape):
            raise AdapterMismatchError(
                f"adapter tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {tuple(ref.shape)}"
            )


def state_delta(new: AdapterState, old: AdapterState) -> AdapterState:
    """``new - old`` per tensor; both must belong to the same backbone and specs."""
    _check_same_kind(new, old)
    check_compatible(old, new)
    return AdapterState({k: new[k] - old[k] for k in old}, old.specs, old.backbone_hash)


def apply_delta(state: AdapterState, delta: AdapterState, weight: float = 1.0) -> AdapterState:
    """``state + weight * delta`` per tensor."""
    _check_same_kind(state, delta)
    check_compatible(state, delta)
    return AdapterState({k: state[k] + weight * delta[k].to(state[k].dtype) for k in state}, state.specs,
                        state.backbone_hash)


def _check_same_kind(a: AdapterState, b: AdapterState) -> None:
    if a.backbone_hash != b.backbone_hash:
        raise AdapterMismatchError(
            f"adapter states belong to different backbones ({a.backbone_hash[:12]} vs {b.backbone_hash[:12]})"
        )
    if a.specs != b.specs:
        raise AdapterMismatchError(f"adapter specs differ: {a.specs} vs {b.specs}")
