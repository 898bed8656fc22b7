"""The federation's settings: one frozen dataclass, written as JSON next to every run's results.

The same config drives ``fed-server`` (Flower deployment engine) and can drive a simulation backend; it
travels to the ServerApp as the Flower run config (flat keys with dashes, see :func:`to_run_config`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from fedge.errors import ConfigError
from fedge.pretrain import PretrainConfig

_PRETRAIN = PretrainConfig()


@dataclass(frozen=True)
class FederationConfig:
    """Everything one federated run needs (defaults run on one laptop)."""

    # run
    rounds: int = 3
    cohort_size: int = 3
    min_clients: int = 2
    round_timeout_s: float = 120.0
    max_retries: int = 2
    wait_for_clients_s: float = 300.0
    cohort_grace_s: float = 15.0  # after min_clients connected, wait this long for a full cohort
    seed: int = 0
    # data: the label count and the image shape the model is built for come from it (fedge.server.task)
    dataset: str = "flair-style"  # "flair": the real FLAIR HDF5 file at flair_path
    flair_path: str = ""
    image_size: int = 0  # FLAIR: resize images to image_size x image_size (0 = the file's own size)
    public_users: int = 0  # FLAIR: training users held out of the federation to pretrain the backbone on
    # model and adapters
    arch: str = "resnet_gn_small"
    adapter: str = "film"
    label_set: str = "fine"
    pretrain_images: int = _PRETRAIN.num_images  # the backbone: fedge.pretrain's defaults unless overridden
    pretrain_epochs: float = _PRETRAIN.epochs
    pretrained_path: str = ""  # a local torchvision/timm checkpoint the backbone starts from (nothing downloads)
    # local training (each client)
    local_epochs: float = 1.0
    lr: float = 0.05
    batch_size: int = 16
    optimizer: str = "sgd"
    # example-level DP on clients (DP-SGD); client_noise_multiplier = 0 turns it off
    client_dp: bool = True
    client_noise_multiplier: float = 1.0
    client_max_grad_norm: float = 1.0
    client_delta: float = 1e-4
    # user-level DP on the server (DP-FedAvg); user_noise_multiplier = 0 with user_dp keeps clipping only
    user_dp: bool = True
    user_noise_multiplier: float = 1.0
    user_clip: float = 1.0
    user_delta: float = 1e-3
    population_size: int = 0  # eligible users; 0 = cohort_size (q = 1: every connected client, every round)
    epsilon_budget: float = 0.0  # 0 = no budget (ledger still records every spend)
    # validation
    max_delta_norm: float = 1e3
    max_payload_bytes: int = 0  # 0 = 4x the global state's size
    # evaluation
    eval_users: int = 20
    eval_every: int = 1
    federated_eval: bool = True
    num_users: int = 100  # FLAIR-style population the server's held-out users come from
    data_seed: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.cohort_size < 1 or self.min_clients < 1:
            raise ConfigError("rounds, cohort_size and min_clients must be >= 1")
        if self.min_clients > self.cohort_size:
            raise ConfigError(f"min_clients ({self.min_clients}) exceeds cohort_size ({self.cohort_size})")
        if self.user_dp and self.user_clip <= 0:
            raise ConfigError("user_clip must be > 0 with user-level DP")
        if self.label_set not in ("fine", "coarse"):
            raise ConfigError(f"label_set must be 'fine' or 'coarse', got {self.label_set!r}")
        if self.dataset not in ("flair-style", "flair"):
            raise ConfigError(f"dataset must be 'flair-style' or 'flair', got {self.dataset!r}")
        if self.dataset == "flair" and not self.flair_path:
            raise ConfigError("dataset 'flair' needs flair_path, the FLAIR HDF5 file (see docs/flair.md)")
        if self.dataset == "flair" and self.public_users <= 0 and not self.pretrained_path:
            raise ConfigError("dataset 'flair' needs a backbone: set public_users > 0 (pretrain on FLAIR training "
                              "users kept out of the federation) and/or pretrained_path (a local checkpoint)")

    def to_run_config(self) -> dict[str, Any]:
        """Flat ``key-with-dashes -> scalar`` mapping (Flower run config)."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> FederationConfig:
        """Build from a mapping with ``snake_case`` or ``dash-case`` keys; unknown keys are ignored."""
        known = {f.name: f.type for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = key.replace("-", "_")
            if name in known:
                default = getattr(cls, name)
                kwargs[name] = type(default)(value) if not isinstance(default, bool) else bool(value)
        return cls(**kwargs)

    def with_overrides(self, **overrides: Any) -> FederationConfig:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> FederationConfig:
        try:
            return cls.from_mapping(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read federation config {path}: {exc}") from None
