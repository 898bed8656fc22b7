"""The committed stubs are what protoc generates from the committed .proto files; the codec round-trips."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import fedge.proto
from fedge.errors import ValidationError
from fedge.proto import codec
from fedge.proto import fedge_pb2 as pb

PROTO_DIR = Path(fedge.proto.__file__).resolve().parent


def _generator():
    spec = importlib.util.spec_from_file_location("fedge_proto_generate", PROTO_DIR / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stubs_match_protos(tmp_path: Path) -> None:
    written = _generator().generate(tmp_path)
    assert {p.name for p in written} == {"fedge_pb2.py", "fedge_pb2.pyi", "fedge_pb2_grpc.py"}
    for fresh in written:
        committed = PROTO_DIR / fresh.name
        assert committed.read_text() == fresh.read_text(), f"{fresh.name} is stale: run python proto/generate.py"


def test_stub_imports_are_package_qualified() -> None:
    text = (PROTO_DIR / "fedge_pb2_grpc.py").read_text()
    assert "from fedge.proto import fedge_pb2" in text
    assert "\nimport fedge_pb2" not in text


def test_tensor_roundtrip_all_dtypes() -> None:
    rng = np.random.default_rng(0)
    for dtype in codec.DTYPES:
        arr = (rng.normal(size=(3, 4)) * 10).astype(dtype)
        back = codec.from_tensor(codec.to_tensor("x", arr))
        assert back.dtype == arr.dtype and np.array_equal(back, arr)


def test_bundle_roundtrip_and_hash_checks() -> None:
    tensors = {"b.weight": np.ones(4, np.float32), "a.bias": np.arange(3, dtype=np.float32)}
    msg = codec.encode_bundle(tensors, version=7, backbone_hash="abc",
                              specs=[{"kind": "film", "targets": ["*"], "rank": 0}])
    wire = pb.AdapterBundle.FromString(msg.SerializeToString())
    assert [t.name for t in wire.tensors] == ["a.bias", "b.weight"] and wire.version == 7
    out = codec.decode_bundle(wire, backbone_hash="abc")
    assert all(np.array_equal(out[k], tensors[k]) for k in tensors)
    with pytest.raises(ValidationError) as e:
        codec.decode_bundle(wire, backbone_hash="other")
    assert e.value.reason == "backbone"
    wire.tensors[0].data = np.full(3, 9, np.float32).tobytes()
    with pytest.raises(ValidationError) as e:
        codec.decode_bundle(wire)
    assert e.value.reason == "hash"


def test_bad_tensor_messages_are_rejected_with_reason() -> None:
    with pytest.raises(ValidationError) as e:
        codec.from_tensor(pb.Tensor(name="x", dtype="complex64", shape=[1], data=b"\0" * 8))
    assert e.value.reason == "dtype"
    with pytest.raises(ValidationError) as e:
        codec.from_tensor(pb.Tensor(name="x", dtype="float32", shape=[2, 2], data=b"\0" * 12))
    assert e.value.reason == "shape"
