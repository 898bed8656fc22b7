"""The learning task both ends share: backbone by pretrain config, adapters by spec, FLAIR-style data.

Server and clients build the same frozen backbone from the same :class:`~fedge.pretrain.PretrainConfig`
(cached under ``FEDGE_HOME`` by config hash) and check it against the run's backbone content hash, so a
client on another backbone fails loudly instead of training garbage.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from fedge.adapters import AdapterState, adapter_state, backbone_hash, inject, load_adapter_state
from fedge.adapters.spec import AdapterSpec, parse_adapter_kinds
from fedge.data.base import UserData
from fedge.errors import AdapterMismatchError, DataError
from fedge.pretrain import PretrainConfig, load_or_pretrain_backbone

_BACKBONES: dict[PretrainConfig, nn.Module] = {}


def pretrain_config(hparams: Mapping[str, Any]) -> PretrainConfig:
    """The backbone's pretrain config from a run config or a message's config record."""
    d = PretrainConfig()
    return PretrainConfig(arch=str(hparams.get("arch", d.arch)),
                          num_images=int(hparams.get("pretrain-images", d.num_images)),
                          epochs=float(hparams.get("pretrain-epochs", d.epochs)))


def load_backbone(cfg: PretrainConfig, expected_hash: str | None = None, progress: bool = False) -> nn.Module:
    """A fresh copy of the cached (or freshly pretrained) backbone; checks ``expected_hash`` if given."""
    import copy

    if cfg not in _BACKBONES:
        model, _ = load_or_pretrain_backbone(cfg, progress=progress)
        _BACKBONES[cfg] = model
    model = copy.deepcopy(_BACKBONES[cfg])
    if expected_hash is not None:
        mine = backbone_hash(model)
        if mine != expected_hash:
            raise AdapterMismatchError(
                f"this device's backbone is {mine[:12]}, the run uses {expected_hash[:12]}; copy the server's "
                f"backbone file (FEDGE_HOME/backbones/) to this device or match its pretrain settings")
    return model


def specs_for(adapter: str, num_classes: int) -> tuple[AdapterSpec, ...]:
    """Adapter specs from a CLI string such as ``film`` or ``film+head`` (multi-label head)."""
    return parse_adapter_kinds(adapter, num_classes=num_classes, multilabel=True)


def adapted_model(cfg: PretrainConfig, specs: tuple[AdapterSpec, ...], state: AdapterState | None = None,
                  seed: int = 0) -> nn.Module:
    """Backbone + injected adapters, loaded with ``state`` when given (whose backbone hash is checked)."""
    model = load_backbone(cfg, state.backbone_hash if state is not None else None)
    inject(model, specs, seed=seed)
    if state is not None:
        load_adapter_state(model, state)
    return model


def initial_state(cfg: PretrainConfig, specs: tuple[AdapterSpec, ...], seed: int = 0) -> AdapterState:
    """The run's round-0 global adapter state."""
    return adapter_state(adapted_model(cfg, specs, seed=seed))


def save_user_data(data: UserData, path: str | Path) -> Path:
    """Write one user's data as ``.npz`` (images + one array per label set) for a SuperNode to load fast."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    arrays: dict[str, Any] = {f"labels_{k}": v for k, v in data.labels.items()}
    np.savez(tmp, images=data.images, user_id=np.array(data.user_id), **arrays)
    tmp.replace(path)
    return path


def load_user_data(path: str | Path) -> UserData:
    """Read a ``.npz`` written by :func:`save_user_data` (or by hand: ``images`` + ``labels_<set>``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "data.npz"
    if not path.is_file():
        raise DataError(f"no local data at {path}; pass --data-dir DIR (with data.npz) or --user-id")
    with np.load(path, allow_pickle=False) as z:
        if "images" not in z:
            raise DataError(f"{path} has no 'images' array")
        labels = {k.removeprefix("labels_"): z[k].astype(np.float32) for k in z.files if k.startswith("labels_")}
        uid = str(z["user_id"]) if "user_id" in z.files else path.stem
        return UserData(uid, z["images"].astype(np.float32), labels)
