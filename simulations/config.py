"""Simulation settings: a frozen dataclass loaded from TOML, overridden by CLI flags, saved with every run.

A TOML config has two tables::

    [simulation]            # SimConfig fields: dataset, population, backend, Ray resources, evaluation
    dataset = "flair-style"
    num_users = 1000
    [federation]            # any fedge.server.config.FederationConfig field (the deployment's own config)
    rounds = 30
    cohort_size = 50
    adapter = "film"

``user_epsilon`` (target user-level epsilon) calibrates ``federation.user_noise_multiplier`` with
``fedge.privacy`` for the run's rounds, cohort rate and ``user_delta``; ``inf`` turns user-level noise off.

The dataset settings can also be named ``dataset.KEY`` (``--set dataset.flair_path=FILE``): ``dataset``,
``flair_path``, ``num_users`` and ``data_seed`` live in ``[simulation]`` (and are copied into the
federation's config, which the server evaluates with), ``image_size``, ``public_users`` and
``pretrained_path`` in ``[federation]``.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from fedge.errors import ConfigError
from fedge.server.config import FederationConfig

DATASETS = ("flair-style", "flair")
BACKENDS = ("ray", "inprocess")
#: fraction of a FLAIR-style population that is in ``train`` (FlairStyleDataset's default split)
TRAIN_FRACTION = 0.8
#: ``dataset.KEY`` -> the table that holds KEY
DATASET_KEYS = {"dataset": "simulation", "flair_path": "simulation", "num_users": "simulation",
                "data_seed": "simulation", "image_size": "federation", "public_users": "federation",
                "pretrained_path": "federation"}


@dataclass(frozen=True)
class SimConfig:
    """One simulated federation: dataset and population, engine, evaluation; ``federation`` is the server's config."""

    name: str = "custom"
    dataset: str = "flair-style"
    flair_path: str = ""  # real FLAIR HDF5 file (dataset = "flair")
    num_users: int = 1000  # FLAIR-style users in all populations (train ~80%, val, test)
    data_seed: int = 0
    backend: str = "ray"  # "ray": Flower Simulation Engine; "inprocess": same apps, one process
    num_cpus: int = 2  # Ray: CPUs given to Ray (one actor per client_cpus)
    client_cpus: float = 1.0
    object_store_mb: int = 128
    targeted_polling: bool = True  # Ray: poll only nodes with messages (see engine.targeted_message_polling)
    test_users: int = 100  # held-out test users for the per-round AP curve (0 = none)
    eval_every: int = 5  # evaluate the saved global adapters on test users every N rounds (and the last)
    user_epsilon: float = 0.0  # > 0: calibrate user_noise_multiplier to this (inf = no noise); 0 = use as given
    federation: FederationConfig = field(default_factory=FederationConfig)

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.dataset == "flair" and not self.flair_path:
            raise ConfigError("dataset 'flair' needs flair_path (or --flair-path PATH) to the FLAIR HDF5 file")
        if self.dataset == "flair-style" and self.num_users < 3:
            raise ConfigError(f"num_users must be >= 3, got {self.num_users}")
        if self.user_epsilon < 0:
            raise ConfigError(f"user_epsilon must be > 0 (or 0 to keep user_noise_multiplier), got {self.user_epsilon}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["user_epsilon"] = _num(self.user_epsilon)
        return d

    def save(self, path: str | Path) -> None:
        """Write the resolved config (JSON) next to the run's results."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str) + "\n")


def _num(x: float) -> float | str:
    return "inf" if x == math.inf else x


def builtin_configs() -> list[str]:
    """Names of the configs shipped in ``fedge/simulations/configs/``."""
    root = resources.files("fedge.simulations") / "configs"
    return sorted(p.name.removesuffix(".toml") for p in root.iterdir() if p.name.endswith(".toml"))


def config_path(name_or_path: str) -> Path:
    """A TOML path, or the shipped config of that name (``flair-style-small``, ``flair-style``, ``flair``)."""
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.is_file():
        return p
    shipped = Path(str(resources.files("fedge.simulations") / "configs" / f"{name_or_path}.toml"))
    if shipped.is_file():
        return shipped
    raise ConfigError(f"no config {name_or_path!r}: pass a .toml file or one of {', '.join(builtin_configs())}")


def _fields_of(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    known = {f.name for f in fields(cls)} - {"federation"}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"unknown setting {key!r} in [{where}]; known: {', '.join(sorted(known))}")
        out[name] = value
    return out


def _coerce(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Cast values (strings from ``--set``, ints from TOML) to the type of the field's default."""
    out: dict[str, Any] = {}
    for k, v in kwargs.items():
        default = getattr(cls, k)
        if isinstance(default, bool):
            out[k] = v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes", "on")
        elif isinstance(default, (int, float, str)):
            try:
                out[k] = type(default)(v)
            except (TypeError, ValueError):
                raise ConfigError(f"{k}={v!r} is not a valid {type(default).__name__}") from None
        else:
            out[k] = v
    return out


def _dataset_table(data: dict[str, Any]) -> dict[str, Any]:
    """Move a ``[dataset]`` table's keys to the tables that hold them."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for key, value in dict(data.pop("dataset", {})).items():
        name = key.replace("-", "_")
        if name not in DATASET_KEYS:
            raise ConfigError(f"unknown setting {key!r} in [dataset]; known: {', '.join(sorted(DATASET_KEYS))}")
        data.setdefault(DATASET_KEYS[name], {})[name] = value
    return data


def from_mapping(data: dict[str, Any]) -> SimConfig:
    """Build a SimConfig from ``{"simulation": {...}, "federation": {...}}`` (TOML layout; ``dataset`` too)."""
    data = _dataset_table(data)
    unknown = set(data) - {"simulation", "federation"}
    if unknown:
        raise ConfigError(f"unknown TOML tables {sorted(unknown)}; use [simulation], [federation] and [dataset]")
    sim = _coerce(SimConfig, _fields_of(SimConfig, dict(data.get("simulation", {})), "simulation"))
    fed = _coerce(FederationConfig, _fields_of(FederationConfig, dict(data.get("federation", {})), "federation"))
    return SimConfig(**sim, federation=FederationConfig(**fed))


def load_config(name_or_path: str, overrides: dict[str, Any] | None = None) -> SimConfig:
    """Load a TOML config and apply ``overrides`` (``simulation.KEY`` / ``federation.KEY`` or bare keys)."""
    path = config_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    data.setdefault("simulation", {}).setdefault("name", path.stem)
    for key, value in (overrides or {}).items():
        table, _, name = key.rpartition(".")
        if not table:
            sim_names = {f.name for f in fields(SimConfig)}
            table = "simulation" if name.replace("-", "_") in sim_names else "federation"
        data.setdefault(table, {})[name.replace("-", "_")] = value
    return from_mapping(_dataset_table(data))


def resolve(cfg: SimConfig, population: int) -> SimConfig:
    """Fill the federation's population-dependent settings and calibrate user-level noise."""
    fed = replace(cfg.federation, population_size=population, num_users=cfg.num_users, data_seed=cfg.data_seed,
                  dataset=cfg.dataset, flair_path=cfg.flair_path,
                  min_clients=min(cfg.federation.min_clients, cfg.federation.cohort_size))
    if cfg.federation.cohort_size > population:
        raise ConfigError(f"cohort_size {cfg.federation.cohort_size} exceeds the {population} training users")
    if cfg.user_epsilon > 0:
        if cfg.user_epsilon == math.inf:
            fed = replace(fed, user_noise_multiplier=0.0)
        else:
            from fedge.privacy.user_dp import calibrate_user_noise

            z = calibrate_user_noise(cfg.user_epsilon, fed.user_delta, fed.rounds, fed.cohort_size / population)
            fed = replace(fed, user_dp=True, user_noise_multiplier=z)
    return replace(cfg, federation=fed)
