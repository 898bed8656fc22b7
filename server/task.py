"""The learning task both ends share: data source, label count, backbone by pretrain config, adapters by spec.

The server derives the :class:`Task` from its :class:`~fedge.server.config.FederationConfig` (opening the
dataset: the label count and image shape come from the data) and sends the backbone's
:class:`~fedge.pretrain.PretrainConfig` with every round; clients build the same frozen backbone from it
(cached under ``FEDGE_HOME`` by config hash) and check it against the run's backbone content hash, so a
client on another backbone fails loudly instead of training garbage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from fedge.adapters import AdapterState, adapter_state, backbone_hash, inject, load_adapter_state
from fedge.adapters.spec import AdapterSpec, parse_adapter_kinds
from fedge.data.base import UserData
from fedge.data.source import DataSource, fingerprint, image_shape, num_labels
from fedge.errors import AdapterMismatchError, ConfigError, DataError
from fedge.pretrain import PretrainConfig, load_or_pretrain_backbone
from fedge.server.config import FederationConfig

_BACKBONES: dict[PretrainConfig, nn.Module] = {}
#: PretrainConfig fields a train message carries as ``pretrain-<name>`` when they differ from the default
_MESSAGE_FIELDS = ("in_chans", "image_size", "num_classes", "label_set", "flair_path", "public_users", "weights",
                   "inputs_id")


@dataclass(frozen=True)
class Task:
    """What a federation learns: its data, the label set and its size, and the backbone to adapt."""

    source: DataSource
    label_set: str
    num_classes: int
    pretrain: PretrainConfig

    @property
    def classifier_fits(self) -> bool:
        """Whether the backbone's own classifier was trained for this label set (a no-adaptation baseline)."""
        trained = self.pretrain.epochs > 0 and (not self.pretrain.flair_path or self.pretrain.public_users > 0)
        return trained and self.pretrain.label_set == self.label_set and self.pretrain.num_classes == self.num_classes


def data_source(cfg: FederationConfig) -> DataSource:
    """The dataset a federation's config names."""
    return DataSource(cfg.dataset, num_users=cfg.num_users, seed=cfg.data_seed, flair_path=cfg.flair_path,
                      image_size=cfg.image_size, public_users=cfg.public_users)


def _file_hash(path: str) -> str:
    try:
        with open(Path(path).expanduser(), "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()[:16]
    except OSError as exc:
        raise ConfigError(f"cannot read pretrained weights {path}: {exc}") from None


@lru_cache(maxsize=8)
def task_for(cfg: FederationConfig) -> Task:
    """The task of a federation: FLAIR-style keeps its backbone (pretrained on fine labels, 1x32x32);
    real FLAIR gets an RGB backbone whose classifier is the label set's size, pretrained on the file's
    public users and/or started from ``pretrained_path``."""
    src = data_source(cfg)
    n = num_labels(src, cfg.label_set)
    weights = str(Path(cfg.pretrained_path).expanduser()) if cfg.pretrained_path else ""
    base = PretrainConfig(arch=cfg.arch, num_images=cfg.pretrain_images, epochs=cfg.pretrain_epochs, weights=weights,
                          inputs_id=_file_hash(weights) if weights else "")
    if src.dataset == "flair-style":
        return Task(src, cfg.label_set, n, base)
    c, h, w = image_shape(src)
    if h != w:
        raise DataError(f"{cfg.flair_path} has {h}x{w} images; set image_size to train on square inputs")
    ids = fingerprint(src) + (base.inputs_id and "+" + base.inputs_id)
    pretrain = replace(base, in_chans=c, image_size=h, num_classes=n, label_set=cfg.label_set,
                       flair_path=str(Path(cfg.flair_path).expanduser().resolve()),
                       public_users=cfg.public_users, inputs_id=hashlib.sha256(ids.encode()).hexdigest()[:16])
    return Task(src, cfg.label_set, n, pretrain)


def pretrain_hparams(cfg: PretrainConfig) -> dict[str, Any]:
    """The backbone's fields a train message adds to ``arch``/``pretrain-images``/``pretrain-epochs``
    (only those off their defaults, so FLAIR-style messages stay as they were)."""
    d = PretrainConfig()
    return {f"pretrain-{k.replace('_', '-')}": getattr(cfg, k) for k in _MESSAGE_FIELDS
            if getattr(cfg, k) != getattr(d, k)}


def pretrain_config(hparams: Mapping[str, Any]) -> PretrainConfig:
    """The backbone's pretrain config from a run config (FederationConfig keys) or a message's config record."""
    if "dataset" in hparams:  # a run config: derive it from the task
        return task_for(FederationConfig.from_mapping(dict(hparams))).pretrain
    d = PretrainConfig()
    types = {f.name: type(getattr(d, f.name)) for f in fields(d)}
    extra = {k: types[k](hparams[f"pretrain-{k.replace('_', '-')}"]) for k in _MESSAGE_FIELDS
             if f"pretrain-{k.replace('_', '-')}" in hparams}
    return PretrainConfig(arch=str(hparams.get("arch", d.arch)),
                          num_images=int(hparams.get("pretrain-images", d.num_images)),
                          epochs=float(hparams.get("pretrain-epochs", d.epochs)), **extra)


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
