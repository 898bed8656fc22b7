"""Pretrain a backbone on the public split and cache it under ``FEDGE_HOME`` by content hash.

The cache key is a hash of the pretraining config (architecture, data, schedule, seed), so a changed
config never returns a stale backbone; the file also records the backbone's content hash, checked on load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save_file
from torch import nn

from fedge.adapters import backbone_hash
from fedge.adapters.state import read_metadata
from fedge.data.flair_style import FlairStyleDataset, public_split
from fedge.errors import DataError
from fedge.models import create_model
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

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "v": CACHE_VERSION}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def cache_path(cfg: PretrainConfig) -> Path:
    return fedge_home() / "backbones" / f"{cfg.arch}-{cfg.key()}.safetensors"


def _build(cfg: PretrainConfig) -> nn.Module:
    return create_model(cfg.arch, num_classes=10, in_chans=1)


def load_backbone(path: str | Path, arch: str) -> tuple[nn.Module, dict[str, str]]:
    """Load a cached backbone file and verify its recorded content hash."""
    path = Path(path)
    try:
        data = path.read_bytes()
        state = st_load(data)
        meta = read_metadata(data)
    except Exception as exc:
        raise DataError(f"cached backbone {path} is unreadable ({exc}); delete it to pretrain again") from None
    model = create_model(arch, num_classes=10, in_chans=1)
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
        return load_backbone(path, cfg.arch)
    torch.manual_seed(cfg.seed)
    model = _build(cfg)
    data = public_split(cfg.num_images, seed=cfg.seed)
    held_out = public_split(2_000, seed=cfg.seed + 10_000)
    t0 = time.perf_counter()
    stats = train(model, data.images, data.labels["fine"], multilabel=True,
                  cfg=TrainConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed),
                  progress=progress, desc=f"pretrain {cfg.arch}")
    metrics = evaluate(model, held_out.images, held_out.labels["fine"], multilabel=True)
    info = {"arch": cfg.arch, "config": json.dumps(asdict(cfg)), "backbone_hash": backbone_hash(model),
            "public_macro_ap": f"{metrics['macro_ap']:.4f}", "seconds": f"{time.perf_counter() - t0:.1f}",
            "final_loss": f"{stats['loss']:.4f}"}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp), metadata=info)
    tmp.replace(path)
    log.info("pretrained %s in %ss (public macro-AP %s) -> %s", cfg.arch, info["seconds"],
             info["public_macro_ap"], path)
    return model.eval(), info


def zero_adaptation_baseline(model: nn.Module, dataset: FlairStyleDataset, max_users: int | None = None
                             ) -> dict[str, float]:
    """Macro/micro AP of the pretrained backbone as-is on the test population's fine labels."""
    test = dataset.pooled("test", max_users)
    return evaluate(model, test.images, test.labels["fine"], multilabel=True)
