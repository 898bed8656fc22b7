"""Model-level adapter operations: inject into a frozen backbone, read/write state, merge."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase

import torch
from torch import nn

from fedge.adapters import film, head, lora
from fedge.adapters.spec import AdapterSpec
from fedge.adapters.state import AdapterState, check_compatible
from fedge.errors import AdapterMismatchError, ConfigError

_SPECS_ATTR = "fedge_specs"
_HASH_ATTR = "fedge_backbone_hash"
_NAMES_ATTR = "fedge_adapter_names"


def tensors_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every entry's name, dtype, shape and bytes (order-independent)."""
    h = hashlib.sha256()
    for name, t in sorted(tensors.items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def backbone_hash(model: nn.Module) -> str:
    """Content hash of a model: :func:`tensors_hash` of its state dict."""
    return tensors_hash(model.state_dict())


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, module)


def _matches(name: str, targets: Sequence[str]) -> bool:
    return not targets or any(fnmatchcase(name, t) for t in targets)


def inject(model: nn.Module, specs: Sequence[AdapterSpec] | AdapterSpec, seed: int = 0) -> nn.Module:
    """Freeze ``model`` and add the adapters of ``specs`` in place; returns the same model.

    The backbone hash is taken before anything changes. Adapter initialisation is seeded (``seed``) so
    every process that injects the same specs into the same backbone gets the same initial state.
    """
    if getattr(model, _SPECS_ATTR, None) is not None:
        raise ConfigError("this model already has adapters; inject once into a fresh backbone")
    specs = (specs,) if isinstance(specs, AdapterSpec) else tuple(specs)
    kinds = [s.kind for s in specs]
    if len(set(kinds)) != len(specs):
        raise ConfigError(f"one spec per adapter kind, got {kinds}")
    if "full" in kinds and not set(kinds) <= {"full", "head"}:
        raise ConfigError(f"full fine-tuning combines only with a new head, got {kinds}")
    digest = backbone_hash(model)
    model.requires_grad_(False)
    cls_name = head.classifier_name(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for spec in specs:
            _inject_one(model, spec, cls_name)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise ConfigError(f"adapters {[s.kind for s in specs]} matched no module of {type(model).__name__}")
    setattr(model, _SPECS_ATTR, specs)
    setattr(model, _HASH_ATTR, digest)
    setattr(model, _NAMES_ATTR, tuple(names))
    return model


def _inject_one(model: nn.Module, spec: AdapterSpec, cls_name: str) -> None:
    if spec.kind == "full":
        for name, p in model.named_parameters():
            if _matches(name, spec.targets):
                p.requires_grad_(True)
        return
    if spec.kind == "head":
        new = head.new_head(model, spec.num_classes)
        new.requires_grad_(True)
        setattr(model, cls_name, new)
        return
    chosen: list[str] = []
    for name, module in model.named_modules():
        if not name or name == cls_name or name.startswith(cls_name + "."):
            continue
        if isinstance(module, (film.FiLMNorm, lora.LoRALayer)) or ".lora_" in name or name.endswith(".film"):
            continue
        if spec.kind == "film" and type(module) in film.NORM_CHANNEL_DIM and _matches(name, spec.targets):
            chosen.append(name)
        if spec.kind == "lora" and isinstance(module, (nn.Linear, nn.Conv2d)) and _matches(name, spec.targets):
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                continue
            chosen.append(name)
    for name in chosen:
        base = model.get_submodule(name)
        wrapped = film.wrap(base) if spec.kind == "film" else lora.wrap(base, spec.rank, spec.alpha)
        for p in base.parameters():
            p.requires_grad_(False)
        _set_module(model, name, wrapped)


def specs_of(model: nn.Module) -> tuple[AdapterSpec, ...]:
    specs = getattr(model, _SPECS_ATTR, None)
    if specs is None:
        raise ConfigError("this model has no adapters; call fedge.adapters.inject first")
    return specs


def adapter_names(model: nn.Module) -> tuple[str, ...]:
    """Names of the adapter parameters, as they appear in :func:`adapter_state`."""
    specs_of(model)
    return getattr(model, _NAMES_ATTR)


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable adapter parameters, in :func:`adapter_names` order."""
    params = dict(model.named_parameters())
    return [params[n] for n in adapter_names(model)]


def adapter_state(model: nn.Module) -> AdapterState:
    """Snapshot of the adapter tensors (copies on CPU) with the specs and backbone hash."""
    params = dict(model.named_parameters())
    return AdapterState({n: params[n] for n in adapter_names(model)}, specs_of(model),
                        getattr(model, _HASH_ATTR))


def load_adapter_state(model: nn.Module, state: AdapterState) -> None:
    """Copy ``state`` into the model's adapters; a different backbone or layout is a clear error."""
    mine = getattr(model, _HASH_ATTR, None)
    if mine is None:
        raise AdapterMismatchError("the model has no adapters; inject the state's specs first")
    if state.backbone_hash != mine:
        raise AdapterMismatchError(
            f"adapter was trained on backbone {state.backbone_hash[:16]}, this model's backbone is {mine[:16]}; "
            "load the backbone the adapter was trained on"
        )
    if tuple(state.specs) != specs_of(model):
        raise AdapterMismatchError(f"adapter specs {state.specs} differ from the model's {specs_of(model)}")
    params = dict(model.named_parameters())
    names = adapter_names(model)
    expected = {n: params[n] for n in names}
    check_compatible(AdapterState(expected, state.specs, state.backbone_hash), state)
    with torch.no_grad():
        for n in names:
            params[n].copy_(state[n].to(params[n].device, params[n].dtype))


def _adapter_layers(model: nn.Module) -> Iterable[tuple[str, film.FiLMNorm | lora.LoRALayer]]:
    for name, module in model.named_modules():
        if isinstance(module, (film.FiLMNorm, lora.LoRALayer)):
            yield name, module


def merge_(model: nn.Module) -> None:
    """Fold every adapter into its base layer in place; :func:`unmerge_` restores the weights exactly."""
    for _, layer in _adapter_layers(model):
        layer.merge()


def unmerge_(model: nn.Module) -> None:
    """Undo :func:`merge_` bit-exactly (the original weights were kept)."""
    for _, layer in _adapter_layers(model):
        layer.unmerge()


def merge(model: nn.Module) -> nn.Module:
    """A plain copy of ``model`` with every adapter merged in and no adapter code left."""
    plain = copy.deepcopy(model)
    for name, layer in list(_adapter_layers(plain)):
        _set_module(plain, name, layer.to_plain())
    for attr in (_SPECS_ATTR, _HASH_ATTR, _NAMES_ATTR):
        if hasattr(plain, attr):
            delattr(plain, attr)
    plain.requires_grad_(False)
    return plain.eval()


def check_backbone(model: nn.Module, expected_hash: str) -> None:
    """Raise unless a plain (not yet adapted) model has the expected content hash."""
    actual = backbone_hash(model)
    if actual != expected_hash:
        raise AdapterMismatchError(f"backbone hash {actual[:16]} differs from the expected {expected_hash[:16]}")
