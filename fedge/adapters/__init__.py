"""Adapters on a frozen backbone: FiLM, LoRA and classifier heads (one module per kind)."""

from fedge.adapters.model import (
    adapter_names,
    adapter_parameters,
    adapter_state,
    backbone_hash,
    check_backbone,
    inject,
    load_adapter_state,
    merge,
    merge_,
    specs_of,
    tensors_hash,
    unmerge_,
)
from fedge.adapters.spec import KINDS, AdapterSpec, parse_adapter_kinds
from fedge.adapters.state import AdapterState, apply_delta, state_delta

__all__ = [
    "KINDS",
    "AdapterSpec",
    "AdapterState",
    "adapter_names",
    "adapter_parameters",
    "adapter_state",
    "apply_delta",
    "backbone_hash",
    "check_backbone",
    "inject",
    "load_adapter_state",
    "merge",
    "merge_",
    "parse_adapter_kinds",
    "specs_of",
    "state_delta",
    "tensors_hash",
    "unmerge_",
]
