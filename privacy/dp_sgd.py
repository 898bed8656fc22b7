"""Example-level DP-SGD on adapter parameters only, through Opacus' ``PrivacyEngine``.

Poisson sampling at rate ``q = 1 / ceil(N / batch_size)`` (the rate Opacus itself derives and accounts
for), flat per-sample clipping of the trainable (adapter) gradients to ``max_grad_norm``, Gaussian noise
``sigma * max_grad_norm`` on their sum. The budget is checked and the planned spend is recorded in the
ledger *before* any training (write-ahead); empty Poisson batches still take a noised step.

Opacus pitfalls guarded here: frozen parameters never reach the optimizer (and a trainable backbone
parameter is refused); the model is moved to its device before hooks are attached; each call wraps the
model afresh and removes every hook and ``grad_sample`` attribute on the way out (also on errors), so
federated rounds that call this repeatedly never stack hooks.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from opacus import PrivacyEngine
from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.grad_sample_module import GradSampleHooks
from opacus.grad_sample.gsm_base import AbstractGradSampleModule
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from fedge.errors import ConfigError
from fedge.privacy.accountants import PrivacyReport, calibrate_noise
from fedge.privacy.ledger import PrivacyLedger, Spend

#: per-sample gradient mode per adapter kind, from ``benchmarks/dp_overhead.py`` (docs/privacy.md):
#: "inline" (FiLM layers write their own per-sample gradients, Opacus' hooks take the other layers') was
#: fastest for FiLM; hooks for conv LoRA and the head; functorch and ghost were slower for FiLM and LoRA.
#: Ghost clipping stores no per-sample gradients; pick it via ``grad_sample_mode="ghost"`` when memory binds.
DEFAULT_MODES: dict[str, str] = {"film": "inline", "lora": "hooks", "head": "hooks"}
#: when several kinds are injected, the most expensive one present picks the mode
_COST_ORDER = ("lora", "film", "head")
MODES = ("inline", "hooks", "functorch", "ghost")


@dataclass(frozen=True)
class DPSGDConfig:
    """Local DP-SGD settings. Give ``noise_multiplier`` or ``target_epsilon`` (for this call's steps)."""

    batch_size: int = 64  # expected logical batch size; q = 1 / ceil(N / batch_size)
    epochs: float = 1.0
    steps: int | None = None  # overrides epochs when set
    lr: float = 0.1
    momentum: float = 0.0
    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    max_physical_batch_size: int = 256  # memory bound; larger logical batches are split
    grad_sample_mode: str = "auto"  # "auto" picks DEFAULT_MODES by adapter kind; see MODES

    def __post_init__(self) -> None:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ConfigError("give exactly one of noise_multiplier or target_epsilon (math.inf: no privacy)")
        if self.grad_sample_mode not in (*MODES, "auto"):
            raise ConfigError(f"grad_sample_mode must be one of {MODES} or 'auto', got {self.grad_sample_mode!r}")
        if not self.max_grad_norm > 0 or self.batch_size < 1 or self.max_physical_batch_size < 1:
            raise ConfigError("need max_grad_norm > 0, batch_size >= 1, max_physical_batch_size >= 1")


@dataclass(frozen=True)
class DPSGDResult:
    """What one private training spent and how it went."""

    spend: Spend
    noise_multiplier: float
    sample_rate: float
    steps: int
    grad_sample_mode: str
    mean_loss: float

    @property
    def report(self) -> PrivacyReport:
        """The subject's guarantee after this training (unit, delta, accountant, sampling)."""
        return self.spend.report()


class PerSampleLoss(nn.Module):
    """Wraps a torch loss so ``reduction="none"`` gives one value per example (mean over the rest).

    Opacus' ghost clipping sets ``reduction="none"`` and needs a [batch] vector; a multi-label
    ``BCEWithLogitsLoss`` would give [batch, classes]. With ``"mean"`` it equals the wrapped loss.
    """

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = copy.copy(loss)  # we set its reduction; the caller's module stays as it was
        self.reduction = getattr(loss, "reduction", "mean")

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        setattr(self.loss, "reduction", "none")  # noqa: B010 (nn.Module attribute typing)
        per_sample = self.loss(output, target).reshape(len(output), -1).mean(dim=1)
        if self.reduction == "none":
            return per_sample
        return per_sample.sum() if self.reduction == "sum" else per_sample.mean()


def choose_mode(model: nn.Module) -> str:
    """Per-sample gradient mode for the adapters in ``model``: the most expensive kind present decides.

    "inline" is "hooks" with FiLM layers computing their own per-sample gradients, so it replaces
    "hooks" whenever FiLM is present.
    """
    kinds = _adapter_kinds(model)
    mode = next((DEFAULT_MODES[k] for k in _COST_ORDER if k in kinds), "hooks")
    return "inline" if mode == "hooks" and "film" in kinds else mode


def _adapter_kinds(model: nn.Module) -> set[str]:
    from fedge.adapters import specs_of

    try:
        return {s.kind for s in specs_of(model)}
    except ConfigError:  # a plain module without fedge adapters
        return set()


def _check_trainable(model: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters; with fedge adapters injected they must be exactly the adapter parameters."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError("model has no trainable parameters; inject adapters first (fedge.adapters.inject)")
    if _adapter_kinds(model):
        from fedge.adapters import adapter_parameters

        extra = {id(p) for p in trainable} - {id(p) for p in adapter_parameters(model)}
        if extra:
            names = [n for n, p in model.named_parameters() if id(p) in extra][:5]
            raise ConfigError(f"backbone parameters are trainable ({names}...); only adapters may train under DP here")
    return trainable


def unwrap(model: nn.Module) -> nn.Module:
    """Return the plain module, removing Opacus hooks and per-sample attributes if it was wrapped."""
    while isinstance(model, AbstractGradSampleModule):
        model = model.to_standard_module()
    _film_per_sample(model, None)
    for p in model.parameters():
        for attr in ("grad_sample", "_forward_counter", "_current_grad_sample", "_norm_sample"):
            if hasattr(p, attr):
                delattr(p, attr)
    return model


def _film_per_sample(model: nn.Module, mode: str | None) -> None:
    """Set ``FiLM.per_sample`` on every FiLM layer (``None`` restores plain autograd)."""
    from fedge.adapters.film import FiLM

    for m in model.modules():
        if isinstance(m, FiLM):
            m.per_sample = mode


class _HooksExceptFiLM(GradSampleHooks):
    """Opacus' per-sample-gradient hooks on every trainable layer but FiLM (which writes its own: "inline")."""

    def iterate_submodules(self, module: nn.Module) -> Iterable[nn.Module]:
        from fedge.adapters.film import FiLM

        if not isinstance(module, FiLM):
            yield from super().iterate_submodules(module)


def _attach_hooks_except_film(model: nn.Module) -> _HooksExceptFiLM | None:
    from fedge.adapters.film import FiLM

    others = [m for m in model.modules() if not isinstance(m, FiLM)
              and any(p.requires_grad for p in m.parameters(recurse=False))]
    return _HooksExceptFiLM(model, batch_first=True, loss_reduction="mean") if others else None


class _TensorBatches(Dataset[tuple[torch.Tensor, ...]]):
    """A ``TensorDataset`` that serves a whole sampled batch with one indexing op per tensor.

    ``DataLoader`` calls ``__getitems__`` with the batch's indices; the default path indexes and then
    stacks each example (tens of microseconds each), which is most of a small adapter's step otherwise.
    The collate function then receives ``[batch]`` (or ``[]`` for an empty Poisson draw, which Opacus fills in).
    """

    def __init__(self, data: TensorDataset) -> None:
        self.tensors = data.tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[i] for t in self.tensors)

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, ...]]:
        if not indices:
            return []
        index = torch.as_tensor(indices, dtype=torch.long)
        return [tuple(t[index] for t in self.tensors)]


def _first(batch: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    return batch[0]


def _loader(dataset: Dataset, batch_size: int, gen: torch.Generator | None) -> DataLoader:
    if type(dataset) is TensorDataset:
        return DataLoader(_TensorBatches(dataset), batch_size=batch_size, generator=gen, collate_fn=_first)
    return DataLoader(dataset, batch_size=batch_size, generator=gen)


def _empty_batch(params: list[nn.Parameter], mode: str) -> None:
    """A Poisson draw can be empty; the step must still add noise (the accountant counts it), so
    hand Opacus zero gradients instead of skipping the step."""
    for p in params:
        if mode == "ghost":
            p.grad = torch.zeros_like(p)
        else:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)  # type: ignore[attr-defined]


def plan(dataset_size: int, config: DPSGDConfig, delta: float, accountant: str) -> tuple[float, int, float]:
    """(sample_rate, steps, noise_multiplier) that training will use; pure, so callers can preview."""
    if dataset_size < 1:
        raise ConfigError("cannot train on an empty dataset")
    sample_rate = 1.0 / math.ceil(dataset_size / config.batch_size)
    steps = config.steps if config.steps is not None else max(1, round(config.epochs / sample_rate))
    if config.noise_multiplier is not None:
        sigma = float(config.noise_multiplier)
    else:
        assert config.target_epsilon is not None
        sigma = calibrate_noise(config.target_epsilon, delta, sample_rate, steps, accountant)  # type: ignore[arg-type]
    return sample_rate, steps, sigma


def train_dp_sgd(
    model: nn.Module,
    dataset: Dataset,
    *,
    ledger: PrivacyLedger,
    run: str,
    round: int,
    subject: str,
    config: DPSGDConfig,
    loss_fn: nn.Module | None = None,
    device: str | torch.device = "cpu",
    seed: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> DPSGDResult:
    """Train the trainable (adapter) parameters of ``model`` in place with DP-SGD; returns the spend.

    ``subject`` is whose data this is (a client id). Raises :class:`PrivacyBudgetExceeded` before
    touching the model if the planned steps would exceed the run's budget. The planned steps are
    recorded in the ledger before training starts (if training then fails, they stay recorded).
    """
    model = unwrap(model)
    budget = ledger.budget(run)
    assert budget is not None
    if budget.unit != "example":
        raise ConfigError(f"run {run!r} accounts per {budget.unit}; DP-SGD spends per example")
    trainable = _check_trainable(model)
    sample_rate, steps, sigma = plan(len(dataset), config, budget.delta, budget.accountant)  # type: ignore[arg-type]
    ledger.check(run, subject, sigma, sample_rate, steps)
    mode = choose_mode(model) if config.grad_sample_mode == "auto" else config.grad_sample_mode
    if mode not in MODES:
        raise ConfigError(f"grad_sample_mode must be one of {MODES}, got {mode!r}")
    # Write-ahead: the spend is durable before any private data is touched, so a crash mid-training
    # (or after it, before the update is used) can never leave steps unaccounted.
    spend = ledger.record(run, round, subject, sigma, sample_rate, steps)

    model.to(device)  # before Opacus attaches hooks: moving a wrapped model breaks them
    model.train()
    criterion = PerSampleLoss(loss_fn if loss_fn is not None else nn.CrossEntropyLoss())
    optimizer = torch.optim.SGD(trainable, lr=config.lr, momentum=config.momentum)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    loader = _loader(dataset, config.batch_size, gen)
    with warnings.catch_warnings():
        # torchcsprng is not available: noise comes from torch's PRNG (see docs/privacy.md).
        warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
        engine = PrivacyEngine(accountant=budget.accountant)
        if gen is not None:
            engine.secure_rng = gen  # the Poisson sampler draws from this; a seed makes a run reproducible
        parts: Any = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, criterion=criterion,
            noise_multiplier=sigma, max_grad_norm=config.max_grad_norm, poisson_sampling=True,
            # "inline": Opacus wraps without hooks (its "no_op" mode); FiLM and _HooksExceptFiLM fill grad_sample
            grad_sample_mode="no_op" if mode == "inline" else mode, loss_reduction="mean", noise_generator=gen,
        )
    if mode == "ghost":
        dp_model, dp_opt, dp_crit, dp_loader = parts
    else:
        (dp_model, dp_opt, dp_loader), dp_crit = parts, criterion
    losses: list[float] = []
    hooks: _HooksExceptFiLM | None = None
    try:
        if mode == "inline":
            hooks = _attach_hooks_except_film(model)
        _film_per_sample(model, mode if mode in ("inline", "hooks") else None)
        with warnings.catch_warnings(), BatchMemoryManager(
            data_loader=dp_loader, max_physical_batch_size=config.max_physical_batch_size, optimizer=dp_opt
        ) as mem_loader:
            # The frozen stem's input needs no grad; torch warns about that for every hooked module.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            done = 0
            while done < steps:
                for x, y in mem_loader:
                    x, y = x.to(device), y.to(device)
                    dp_opt.zero_grad(set_to_none=True)
                    if len(x):
                        # The model itself, not Opacus' wrapper: the wrappers only delegate to it, except the
                        # no_op one ("inline"), which calls .forward and so would skip hooks on the root module.
                        loss = dp_crit(model(x), y)
                        loss.backward()
                        losses.append(float(loss.detach()))
                    else:
                        _empty_batch(trainable, mode)
                    dp_opt.step()
                    if not dp_opt._is_last_step_skipped:
                        done += 1
                        if on_step is not None:
                            on_step(done, losses[-1] if losses else float("nan"))
                    if done >= steps:
                        break
                dp_opt.zero_grad(set_to_none=True)
    finally:
        if hooks is not None:
            hooks.cleanup()
        unwrap(dp_model)
    taken = sum(s for _, _, s in engine.accountant.history)
    if taken != steps or {(z, q) for z, q, _ in engine.accountant.history} != {(sigma, sample_rate)}:
        raise RuntimeError(f"Opacus accounted {engine.accountant.history}, fedge recorded {(sigma, sample_rate, steps)}")
    return DPSGDResult(spend, sigma, sample_rate, taken, mode, sum(losses) / max(1, len(losses)))


__all__ = ["DEFAULT_MODES", "DPSGDConfig", "DPSGDResult", "GradSampleModule", "plan", "train_dp_sgd", "unwrap"]
