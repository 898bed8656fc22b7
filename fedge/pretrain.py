"""Pretrain a backbone on the public split and cache it under ``FEDGE_HOME`` by content hash.

The cache key is a hash of the pretraining config (architecture, data, schedule, seed), so a changed
config never returns a stale backbone; the file also records the backbone's content hash, checked on load.
The public split is FLAIR-style's (clean mosaics, the default) or a real FLAIR file's public users
(:mod:`fedge.data.source`); a local torchvision/timm checkpoint can be the starting point (nothing downloads).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save_file
from torch import nn

from fedge.adapters import backbone_hash
from fedge.adapters.state import read_metadata
from fedge.data.base import UserData
from fedge.data.flair_style import FlairStyleDataset, public_split
from fedge.errors import DataError
from fedge.models import create_backbone, load_pretrained
from fedge.paths import fedge_home
from fedge.train import TrainConfig, evaluate, train

log = logging.getLogger(__name__)
CACHE_VERSION = "1"


@dataclass(frozen=True)
class PretrainConfig:
    """How the default backbone is pretrained (multi-label fine labels on clean public mosaics)."""

    arch: str = "resnet_gn_small"
    num_images: int = 24_000
    epochs: float = 4.0
    lr: float = 3e-3
    batch_size: int = 128
    seed: int = 0
    # the model's input and classifier, and the public data (defaults: FLAIR-style, grayscale 32x32, 10 fine)
    in_chans: int = 1
    image_size: int = 32
    num_classes: int = 10
    label_set: str = "fine"  # the label set the classifier is pretrained on
    flair_path: str = ""  # "" = FLAIR-style public mosaics; else the public users of this FLAIR file
    public_users: int = 0
    weights: str = ""  # a local torchvision/timm checkpoint to start from ("" = random initialisation)
    inputs_id: str = ""  # content hash of the files named by path above (FLAIR public split, weights)

    def key(self) -> str:
        # Fields added after the first release enter the key only when set, so that every backbone cached
        # before them (FLAIR-style) keeps its key and file.
        new = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _V1_FIELDS}
        blob = json.dumps({**{k: getattr(self, k) for k in _V1_FIELDS}, "v": CACHE_VERSION,
                           **{k: v for k, v in new.items() if v != _DEFAULTS[k]}}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


_V1_FIELDS = ("arch", "num_images", "epochs", "lr", "batch_size", "seed")
_DEFAULTS = asdict(PretrainConfig())


def cache_path(cfg: PretrainConfig) -> Path:
    return fedge_home() / "backbones" / f"{cfg.arch}-{cfg.key()}.safetensors"


def _build(cfg: PretrainConfig) -> nn.Module:
    return create_backbone(cfg.arch, cfg.num_classes, cfg.in_chans, cfg.image_size)


def public_data(cfg: PretrainConfig) -> tuple[UserData, UserData] | None:
    """(pretraining data, held-out data for the pretrain metric); None when there is nothing to train on.

    FLAIR: the public users (``public_users`` training users outside the federation), the last tenth of
    them held out; capped at ``num_images`` images.
    """
    if not cfg.flair_path:
        return public_split(cfg.num_images, seed=cfg.seed), public_split(2_000, seed=cfg.seed + 10_000)
    if cfg.public_users <= 0:
        return None
    from fedge.data.source import DataSource, pool_users, user_ids

    src = DataSource("flair", flair_path=cfg.flair_path, image_size=cfg.image_size, public_users=cfg.public_users)
    users = user_ids(src, "public")
    n_held = max(1, len(users) // 10) if len(users) > 1 else 0
    train_users, held_users = users[: len(users) - n_held], users[len(users) - n_held:] or users
    data, held = pool_users(src, train_users, max_images=cfg.num_images), pool_users(src, held_users)
    if data is None or held is None:
        raise DataError(f"the {len(users)} public FLAIR users of {cfg.flair_path} have no images; raise public_users")
    return data, held


def load_backbone(path: str | Path, arch: str, num_classes: int = 10, in_chans: int = 1, image_size: int = 32
                  ) -> tuple[nn.Module, dict[str, str]]:
    """Load a cached backbone file and verify its recorded content hash."""
    path = Path(path)
    try:
        data = path.read_bytes()
        state = st_load(data)
        meta = read_metadata(data)
    except Exception as exc:
        raise DataError(f"cached backbone {path} is unreadable ({exc}); delete it to pretrain again") from None
    model = create_backbone(arch, num_classes, in_chans, image_size)
    model.load_state_dict(state)
    digest = backbone_hash(model)
    if digest != meta.get("backbone_hash"):
        raise DataError(f"cached backbone {path} is corrupt (hash {digest[:12]} != recorded "
                        f"{meta.get('backbone_hash', '?')[:12]}); delete it to pretrain again")
    return model.eval(), meta


def load_or_pretrain_backbone(
    cfg: PretrainConfig = PretrainConfig(), progress: bool = True
) -> tuple[nn.Module, dict[str, str]]:
    """Return ``(backbone, info)``; pretrains (minutes on 2 cores) only when no cached copy exists."""
    path = cache_path(cfg)
    if path.is_file():
        return load_backbone(path, cfg.arch, cfg.num_classes, cfg.in_chans, cfg.image_size)
    torch.manual_seed(cfg.seed)
    model = _build(cfg)
    if cfg.weights:  # the classifier stays new: the pretraining label set is not the checkpoint's
        load_pretrained(model, cfg.weights, skip_classifier=True)
    splits = public_data(cfg)
    t0 = time.perf_counter()
    info = {"arch": cfg.arch, "config": json.dumps(asdict(cfg))}
    if splits is not None:
        data, held_out = splits
        stats = train(model, data.images, data.labels[cfg.label_set], multilabel=True,
                      cfg=TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed),
                      progress=progress, desc=f"pretrain {cfg.arch}")
        metrics = evaluate(model, held_out.images, held_out.labels[cfg.label_set], multilabel=True)
        info.update({"public_macro_ap": f"{metrics['macro_ap']:.4f}", "final_loss": f"{stats['loss']:.4f}",
                     "public_images": str(len(data))})
    info.update({"backbone_hash": backbone_hash(model), "seconds": f"{time.perf_counter() - t0:.1f}"})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=info)
    tmp.replace(path)
    log.info("pretrained %s in %ss (public macro-AP %s) -> %s", cfg.arch, info["seconds"],
             info.get("public_macro_ap", "-"), path)
    return model.eval(), info


def zero_adaptation_baseline(model: nn.Module, dataset: FlairStyleDataset, max_users: int | None = None
                             ) -> dict[str, float]:
    """Macro/micro AP of the pretrained backbone as-is on the test population's fine labels."""
    test = dataset.pooled("test", max_users)
    return evaluate(model, test.images, test.labels["fine"], multilabel=True)
