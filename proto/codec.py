"""numpy <-> protobuf for the adapter bundle: tensors with name/dtype/shape/bytes and a content hash.

numpy-only (no torch) so the phone side can use it. Decoding validates before anything is built, so a
malformed message becomes a :class:`fedge.errors.ValidationError` with a reason, never a crash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

from fedge.errors import ValidationError
from fedge.proto import fedge_pb2 as pb

BUNDLE_FORMAT = "fedge-adapter-bundle"
BUNDLE_FORMAT_VERSION = 1
DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8, "int64": np.int64, "int32": np.int32}


def to_tensor(name: str, array: np.ndarray) -> pb.Tensor:
    """Encode ``array`` (C order, little endian) as a :class:`Tensor` message."""
    arr = np.asarray(array)
    dtype = arr.dtype.name
    if dtype not in DTYPES:
        raise ValidationError("dtype", f"{name}: dtype {dtype} is not one of {sorted(DTYPES)}")
    arr = np.ascontiguousarray(arr, dtype=np.dtype(DTYPES[dtype]).newbyteorder("<"))
    return pb.Tensor(name=name, dtype=dtype, shape=list(arr.shape), data=arr.tobytes())


def from_tensor(msg: pb.Tensor) -> np.ndarray:
    """Decode a :class:`Tensor`; raises ``ValidationError`` (reason ``dtype``/``shape``) when inconsistent."""
    if msg.dtype not in DTYPES:
        raise ValidationError("dtype", f"{msg.name!r}: dtype {msg.dtype!r} is not one of {sorted(DTYPES)}")
    dtype = np.dtype(DTYPES[msg.dtype]).newbyteorder("<")
    shape = tuple(int(s) for s in msg.shape)
    if any(s < 0 for s in shape):
        raise ValidationError("shape", f"{msg.name!r}: negative dimension in shape {shape}")
    want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(msg.data) != want:
        raise ValidationError("shape", f"{msg.name!r}: shape {shape} x {msg.dtype} needs {want} bytes, "
                                       f"got {len(msg.data)}")
    return np.frombuffer(msg.data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def tensors_sha256(tensors: Mapping[str, np.ndarray]) -> str:
    """sha256 over ``name|dtype|shape|bytes`` of every tensor in name order (what a bundle records)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|{arr.dtype.name}|{tuple(arr.shape)}|".encode())
        h.update(arr.astype(arr.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def encode_bundle(tensors: Mapping[str, np.ndarray], version: int = 0, backbone_hash: str = "",
                  specs: list[dict] | None = None) -> pb.AdapterBundle:
    """An :class:`AdapterBundle` of ``tensors`` (sorted by name) with its hash, version and specs."""
    msg = pb.AdapterBundle(format=BUNDLE_FORMAT, format_version=BUNDLE_FORMAT_VERSION, backbone_hash=backbone_hash,
                           version=version, tensors_sha256=tensors_sha256(tensors))
    for name in sorted(tensors):
        msg.tensors.append(to_tensor(name, tensors[name]))
    for spec in specs or []:
        msg.specs.append(pb.AdapterSpec(**{k: v for k, v in spec.items() if v is not None}))
    return msg


def decode_bundle(msg: pb.AdapterBundle, backbone_hash: str | None = None) -> dict[str, np.ndarray]:
    """Tensors of a bundle after checking its format, backbone and hash (``ValidationError`` otherwise)."""
    if msg.format != BUNDLE_FORMAT or msg.format_version != BUNDLE_FORMAT_VERSION:
        raise ValidationError("format", f"not a {BUNDLE_FORMAT} v{BUNDLE_FORMAT_VERSION} message "
                                        f"(got {msg.format!r} v{msg.format_version})")
    if backbone_hash is not None and msg.backbone_hash != backbone_hash:
        raise ValidationError("backbone", f"bundle is for backbone {msg.backbone_hash[:12]!r}, "
                                          f"this model is {backbone_hash[:12]!r}")
    tensors = {t.name: from_tensor(t) for t in msg.tensors}
    if len(tensors) != len(msg.tensors):
        raise ValidationError("names", "duplicate tensor names in bundle")
    digest = tensors_sha256(tensors)
    if digest != msg.tensors_sha256:
        raise ValidationError("hash", f"tensor hash {digest[:12]} != recorded {msg.tensors_sha256[:12]}; "
                                      "the bundle was altered in transit")
    return tensors
