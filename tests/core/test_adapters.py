"""Adapters: merge parity, trainability, state round trips, deltas and backbone identity."""

from __future__ import annotations

import pytest
import torch

from fedge.adapters import (
    AdapterSpec,
    AdapterState,
    adapter_names,
    adapter_parameters,
    adapter_state,
    apply_delta,
    backbone_hash,
    inject,
    load_adapter_state,
    merge,
    merge_,
    parse_adapter_kinds,
    state_delta,
    unmerge_,
)
from fedge.adapters.film import FiLMNorm
from fedge.adapters.lora import LoRALayer
from fedge.errors import AdapterMismatchError, ConfigError, DataError
from fedge.models import create_model

ARCHS = {
    "resnet_gn_small": dict(num_classes=10, in_chans=1),
    "resnet18_gn": dict(num_classes=10, in_chans=1, small_input=True),
    "vit_tiny": dict(num_classes=10, in_chans=1),
}
KINDS = ["film", "lora", "head", "film+head", "lora+head", "film+lora+head"]


def _adapted(arch: str, kinds: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model(arch, **ARCHS[arch])
    inject(model, parse_adapter_kinds(kinds, 10, multilabel=True))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # move adapters away from their identity init so merging has work to do
        for p in adapter_parameters(model):
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("kinds", KINDS)
def test_merge_parity_and_plain_module(arch: str, kinds: str) -> None:
    model = _adapted(arch, kinds)
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(x)
        plain = merge(model)
        y_plain = plain(x)
    assert (y - y_plain).abs().max().item() <= 1e-5
    assert not any(isinstance(m, (FiLMNorm, LoRALayer)) for m in plain.modules())
    assert not hasattr(plain, "fedge_specs")
    # the merged model is a plain torch module: it round-trips through a state dict into a fresh zoo model
    if "lora" not in kinds and "film" not in kinds:
        fresh = create_model(arch, **ARCHS[arch])
        fresh.load_state_dict(plain.state_dict())


@pytest.mark.parametrize("arch", list(ARCHS))
def test_inplace_merge_unmerge_is_exact(arch: str) -> None:
    model = _adapted(arch, "film+lora+head")
    x = torch.rand(2, 1, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        y = model(x)
        merge_(model)
        y_merged = model(x)
        unmerge_(model)
        y_back = model(x)
    assert (y - y_merged).abs().max().item() <= 1e-5
    assert torch.equal(y, y_back)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("kinds", ["film", "lora", "head"])
def test_only_adapter_tensors_trainable_and_in_state(arch: str, kinds: str) -> None:
    model = create_model(arch, **ARCHS[arch])
    inject(model, parse_adapter_kinds(kinds, 7, multilabel=False))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    state = adapter_state(model)
    assert trainable == set(state) == set(adapter_names(model))
    marker = {"film": ".film.", "lora": ".lora_", "head": "fc." if "resnet" in arch else "head."}[kinds]
    assert all(marker in n or n.startswith(marker) for n in state)
    assert state.num_parameters() < sum(p.numel() for p in model.parameters()) / 5
    # a training step changes adapters only, bit-exactly leaving the backbone alone
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD(adapter_parameters(model), lr=0.5)
    model.train()
    model(torch.rand(8, 1, 32, 32)).square().mean().backward()
    opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    assert any(not torch.equal(adapter_state(model)[n], state[n]) for n in state)


def test_injection_preserves_outputs_at_init() -> None:
    torch.manual_seed(0)
    model = create_model("resnet_gn_small")
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        y0 = model.eval()(x)
        inject(model, parse_adapter_kinds("film+lora", 10, True))
        assert torch.allclose(model.eval()(x), y0, atol=1e-6)


def test_head_init_is_seeded_and_reinjection_refused() -> None:
    a, b = create_model("resnet_gn_small"), create_model("resnet_gn_small")
    b.load_state_dict(a.state_dict())
    specs = parse_adapter_kinds("lora+head", 5, True)
    inject(a, specs, seed=7)
    inject(b, specs, seed=7)
    sa, sb = adapter_state(a), adapter_state(b)
    assert sa.backbone_hash == sb.backbone_hash
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(ConfigError):
        inject(a, specs)


def test_state_bytes_round_trip_and_file(tmp_path) -> None:
    model = _adapted("vit_tiny", "lora+head")
    state = adapter_state(model)
    again = AdapterState.from_bytes(state.to_bytes())
    assert again.specs == state.specs and again.backbone_hash == state.backbone_hash
    assert all(torch.equal(again[k], state[k]) for k in state)
    state.save(tmp_path / "a.safetensors")
    loaded = AdapterState.load(tmp_path / "a.safetensors")
    assert set(loaded) == set(state)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(DataError):
        AdapterState.load(tmp_path / "bad.safetensors")


def test_delta_and_apply_delta() -> None:
    model = _adapted("resnet_gn_small", "film+head")
    old = adapter_state(model)
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.mul_(1.5).add_(0.1)
    new = adapter_state(model)
    d = state_delta(new, old)
    back = apply_delta(old, d)
    assert all(torch.allclose(back[k], new[k], atol=1e-6) for k in new)
    half = apply_delta(old, d, weight=0.5)
    assert all(torch.allclose(half[k], old[k] + 0.5 * (new[k] - old[k]), atol=1e-6) for k in new)


def test_load_onto_other_backbone_fails_clearly() -> None:
    torch.manual_seed(0)
    model_a = create_model("resnet_gn_small")
    torch.manual_seed(1)
    model_b = create_model("resnet_gn_small")
    assert backbone_hash(model_a) != backbone_hash(model_b)
    specs = parse_adapter_kinds("film", 10, True)
    inject(model_a, specs)
    inject(model_b, specs)
    with pytest.raises(AdapterMismatchError, match="backbone"):
        load_adapter_state(model_b, adapter_state(model_a))


def test_load_checks_specs_and_shapes() -> None:
    model = create_model("resnet_gn_small")
    inject(model, parse_adapter_kinds("lora", 10, True))
    state = adapter_state(model)
    name = next(iter(state))
    bad = AdapterState({**state, name: torch.zeros(3)}, state.specs, state.backbone_hash)
    with pytest.raises(AdapterMismatchError, match="shape"):
        load_adapter_state(model, bad)
    other = AdapterState(dict(state), (AdapterSpec(kind="lora", rank=8),), state.backbone_hash)
    with pytest.raises(AdapterMismatchError, match="specs"):
        load_adapter_state(model, other)
    load_adapter_state(model, state)  # the matching state loads


def test_spec_validation() -> None:
    with pytest.raises(ConfigError):
        AdapterSpec(kind="prefix")
    with pytest.raises(ConfigError):
        AdapterSpec(kind="lora", rank=0)
    with pytest.raises(ConfigError):
        parse_adapter_kinds("film+film", 10, True)
    specs = parse_adapter_kinds("film+head", 4, True)
    assert [s.kind for s in specs] == ["film", "head"] and specs[1].num_classes == 4


def test_lora_targets_select_attention_projections() -> None:
    model = create_model("vit_tiny")
    inject(model, AdapterSpec(kind="lora", targets=("blocks.*.attn.qkv", "blocks.*.attn.proj"), rank=2))
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoRALayer)]
    assert len(wrapped) == 8 and all(".attn." in n for n in wrapped)


def test_head_starts_from_the_backbone_classifier_when_it_fits() -> None:
    model = create_model("resnet_gn_small", num_classes=10)
    old_w = model.fc.weight.detach().clone()
    inject(model, parse_adapter_kinds("head", 10, True))
    assert torch.equal(model.fc.weight, old_w) and model.fc.weight.requires_grad
    other = create_model("resnet_gn_small", num_classes=10)
    inject(other, parse_adapter_kinds("head", 4, True))  # another label set: a fresh head
    assert other.fc.weight.shape == (4, 128)


def test_full_fine_tuning_baseline_exposes_every_tensor() -> None:
    model = create_model("vit_tiny")
    n_params = len(list(model.parameters()))
    inject(model, parse_adapter_kinds("full", 10, True))
    state = adapter_state(model)
    assert len(state) == n_params and all(p.requires_grad for p in model.parameters())
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), merge(model)(x))
    with pytest.raises(ConfigError, match="full"):
        inject(create_model("vit_tiny"), parse_adapter_kinds("full+film", 10, True))
