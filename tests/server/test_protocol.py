"""The message codec: adapter tensors travel packed (a bytes value, no Flower object per tensor) and come back
bit-exact."""

from __future__ import annotations

import pytest
import torch
from flwr.app import Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.task_identity import TaskIdentity

from fedge.adapters import AdapterSpec, AdapterState
from fedge.errors import ValidationError
from fedge.server.protocol import (
    DELTA,
    META,
    decode_global,
    decode_update,
    encode_global,
    encode_update,
    pack,
    unpack,
)

HASH = "c" * 64


def _tensors(n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {f"blocks.{i}.film.gamma": torch.randn(16, generator=g) for i in range(n)} | {
        "head.weight": torch.randn(10, 16, generator=g), "steps": torch.arange(3, dtype=torch.int64),
        "half": torch.randn(4, generator=g).to(torch.bfloat16)}


def test_pack_roundtrip_is_bit_exact_for_every_dtype() -> None:
    t = _tensors(5)
    back = unpack(pack(t))
    assert set(back) == set(t)
    for k in t:
        assert back[k].dtype == t[k].dtype and back[k].shape == t[k].shape and torch.equal(back[k], t[k])


def test_a_global_message_is_a_handful_of_flower_objects_whatever_the_tensor_count() -> None:
    few, many = (RecordDict(dict(encode_global(AdapterState(_tensors(n), [AdapterSpec(kind="film")], HASH), 1, {})))
                 for n in (2, 60))
    assert len(get_all_nested_objects(few)) == len(get_all_nested_objects(many)) == 2  # RecordDict, ConfigRecord
    reply = encode_update(_tensors(60), HASH, {"num-examples": 3})
    assert len(get_all_nested_objects(reply)) == 3  # RecordDict, ConfigRecord, MetricRecord
    state, cfg = decode_global(many)
    assert cfg["round"] == 1 and state.backbone_hash == HASH and len(dict(state)) == 63


@pytest.mark.parametrize("blob", [b"\x10\x00\x00\x00\x00\x00\x00\x00{bad json", "not bytes", 17, None])
def test_corrupt_or_unpacked_updates_are_rejected_as_malformed(blob: object) -> None:
    content = encode_update({"w": torch.zeros(3)}, HASH, {"num-examples": 5})
    if blob is None:
        del content[META][DELTA]
    else:
        content[META][DELTA] = blob  # type: ignore[assignment]
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1  # what a SuperNode sets
    reply = Message(content, dst_node_id=0, message_type="train")
    with pytest.raises(ValidationError) as info:
        decode_update(reply, node=7)
    assert info.value.reason == "malformed" and "node 7" in str(info.value)
