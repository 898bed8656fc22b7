"""DP-SGD on adapters: only adapters move, clip bound, reduction to SGD, budget refusal, no stacked hooks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedge.adapters import AdapterSpec, adapter_names, inject
from fedge.errors import ConfigError, PrivacyBudgetExceeded
from fedge.models import create_model
from fedge.privacy.accountants import compute_epsilon
from fedge.privacy.dp_sgd import DPSGDConfig, plan, train_dp_sgd
from fedge.privacy.ledger import PrivacyLedger

torch.set_num_threads(2)


@pytest.fixture
def ledger(tmp_path: Path) -> PrivacyLedger:
    led = PrivacyLedger(tmp_path / "ledger.db")
    led.open_run("r", epsilon=20.0, delta=1e-5)
    return led


def _data(n: int = 24, size: int = 8, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, size, size, generator=g), torch.randint(0, 10, (n,), generator=g))


def _model(kind: str) -> nn.Module:
    """resnet_gn_small with ``kind`` adapters ("film", "head", or several joined by "+")."""
    torch.manual_seed(0)
    model = create_model("resnet_gn_small", num_classes=10, in_chans=1)
    return inject(model, [AdapterSpec(kind=k, num_classes=10) if k == "head" else AdapterSpec(kind=k)
                          for k in kind.split("+")])


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize(
    "kind,mode",
    [
        ("film", "inline"),
        ("film", "hooks"),
        ("head", "hooks"),
        ("film", "ghost"),
        ("lora", "ghost"),
        pytest.param("lora", "hooks", marks=pytest.mark.slow),
        pytest.param("film", "functorch", marks=pytest.mark.slow),
    ],
)
def test_only_adapters_change(kind: str, mode: str, ledger: PrivacyLedger) -> None:
    model = _model(kind)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    adapters = set(adapter_names(model))
    assert adapters == {n for n, p in model.named_parameters() if p.requires_grad}
    cfg = DPSGDConfig(batch_size=8, steps=3, lr=0.5, noise_multiplier=1.0, grad_sample_mode=mode)
    result = train_dp_sgd(model, _data(), ledger=ledger, run="r", round=1, subject="c1", config=cfg, seed=0)
    after = model.state_dict()
    assert set(after) == set(before)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    frozen = set(before) - adapters
    assert changed and changed <= adapters
    assert all(torch.equal(before[k], after[k]) for k in frozen)  # bit-exact
    assert result.steps == 3 and result.grad_sample_mode == mode
    assert result.spend.epsilon_after == pytest.approx(compute_epsilon(1.0, result.sample_rate, 3, 1e-5))
    assert (result.report.unit, result.report.accountant, result.report.sampling) == ("example", "rdp", "poisson")


def test_per_sample_clip_bound(ledger: PrivacyLedger) -> None:
    """One example, q=1, sigma=0: the step is exactly -lr * g * min(1, C/|g|)."""
    model = _model("head")
    data = TensorDataset(100 * torch.randn(1, 1, 12, 12), torch.tensor([3]))
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    nn.CrossEntropyLoss()(model(data.tensors[0]), data.tensors[1]).backward()
    grad = torch.cat([p.grad.flatten() for p in params if p.grad is not None])
    model.zero_grad(set_to_none=True)
    clip = 0.01
    assert grad.norm() > 10 * clip
    before = torch.cat([p.detach().flatten() for p in params])
    cfg = DPSGDConfig(batch_size=1, steps=1, lr=1.0, max_grad_norm=clip, noise_multiplier=0.0)
    ledger.open_run("free", epsilon=math.inf, delta=1e-5)
    train_dp_sgd(model, data, ledger=ledger, run="free", round=1, subject="c", config=cfg, seed=0)
    step = torch.cat([p.detach().flatten() for p in params]) - before
    assert step.norm().item() == pytest.approx(clip, rel=1e-4)
    assert torch.allclose(step, -grad * clip / grad.norm(), atol=1e-6)


def test_no_noise_huge_clip_is_plain_sgd(ledger: PrivacyLedger) -> None:
    """q=1 includes every example at every step, so sigma=0 and C=1e9 is full-batch gradient descent."""
    data = _data(n=16)
    dp_model, ref = _model("film"), _model("film")
    ledger.open_run("free", epsilon=math.inf, delta=1e-5)
    cfg = DPSGDConfig(batch_size=16, steps=3, lr=0.3, max_grad_norm=1e9, noise_multiplier=0.0)
    result = train_dp_sgd(dp_model, data, ledger=ledger, run="free", round=1, subject="c", config=cfg, seed=0)
    assert result.sample_rate == 1.0
    opt = torch.optim.SGD([p for p in ref.parameters() if p.requires_grad], lr=0.3)
    for _ in range(3):
        opt.zero_grad()
        nn.CrossEntropyLoss()(ref(data.tensors[0]), data.tensors[1]).backward()
        opt.step()
    for (name, a), b in zip(dp_model.state_dict().items(), ref.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name


def test_over_budget_refused_before_training(tmp_path: Path) -> None:
    model = _model("film")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with PrivacyLedger(tmp_path / "l.db") as ledger:
        ledger.open_run("tight", epsilon=1.0, delta=1e-5)
        cfg = DPSGDConfig(batch_size=8, steps=50, noise_multiplier=0.5)
        with pytest.raises(PrivacyBudgetExceeded, match="over the budget"):
            train_dp_sgd(model, _data(), ledger=ledger, run="tight", round=1, subject="c", config=cfg)
        assert ledger.spends("tight") == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert _hook_count(model) == 0


def test_repeated_rounds_do_not_stack_hooks(ledger: PrivacyLedger) -> None:
    model = _model("film")
    base_hooks = _hook_count(model)
    cfg = DPSGDConfig(batch_size=8, steps=1, noise_multiplier=1.0)
    eps = []
    for rnd in range(1, 4):
        r = train_dp_sgd(model, _data(), ledger=ledger, run="r", round=rnd, subject="c1", config=cfg, seed=rnd)
        eps.append(r.spend.epsilon_after)
        assert type(model).__name__ == "ResNetGN"
        assert _hook_count(model) == base_hooks
        assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert eps == sorted(eps) and eps[-1] == pytest.approx(ledger.epsilon("r", "c1"))
    assert eps[-1] == pytest.approx(compute_epsilon(1.0, r.sample_rate, 3, 1e-5))


def test_target_epsilon_and_memory_bounded_batches(ledger: PrivacyLedger) -> None:
    data = _data(n=80)
    cfg = DPSGDConfig(batch_size=20, epochs=1, target_epsilon=5.0, max_physical_batch_size=4)
    q, steps, sigma = plan(len(data), cfg, 1e-5, "rdp")
    assert (q, steps) == (0.25, 4)
    r = train_dp_sgd(_model("head"), data, ledger=ledger, run="r", round=1, subject="c9", config=cfg, seed=0)
    assert r.noise_multiplier == pytest.approx(sigma) and r.steps == 4  # logical steps, not physical
    assert 4.9 <= r.spend.epsilon_after <= 5.0


def test_config_errors(ledger: PrivacyLedger) -> None:
    with pytest.raises(ConfigError):
        DPSGDConfig()
    with pytest.raises(ConfigError):
        DPSGDConfig(noise_multiplier=1.0, grad_sample_mode="magic")
    plain = create_model("resnet_gn_small", num_classes=10, in_chans=1)
    for p in plain.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="inject adapters"):
        train_dp_sgd(plain, _data(), ledger=ledger, run="r", round=1, subject="c", config=DPSGDConfig(noise_multiplier=1.0))
    ledger.open_run("users", epsilon=5.0, delta=1e-5, unit="user")
    with pytest.raises(ConfigError, match="per user"):
        train_dp_sgd(_model("head"), _data(), ledger=ledger, run="users", round=1, subject="c",
                     config=DPSGDConfig(noise_multiplier=1.0))


def test_unfrozen_backbone_is_refused(ledger: PrivacyLedger) -> None:
    model = _model("film")
    model.get_parameter("conv1.weight").requires_grad_(True)
    with pytest.raises(ConfigError, match="backbone parameters are trainable"):
        train_dp_sgd(model, _data(), ledger=ledger, run="r", round=1, subject="c", config=DPSGDConfig(noise_multiplier=1.0))


def test_auto_mode_follows_benchmark_table(ledger: PrivacyLedger) -> None:
    from fedge.privacy.dp_sgd import DEFAULT_MODES, choose_mode

    assert choose_mode(_model("film")) == DEFAULT_MODES["film"] == "inline"
    assert choose_mode(_model("head")) == DEFAULT_MODES["head"] == "hooks"
    film_head = inject(create_model("resnet_gn_small", num_classes=10, in_chans=1),
                       [AdapterSpec(kind="film"), AdapterSpec(kind="head", num_classes=10)])
    assert choose_mode(film_head) == "inline"  # FiLM inline, the head through Opacus' hooks
    both = inject(create_model("resnet_gn_small", num_classes=10, in_chans=1),
                  [AdapterSpec(kind="film"), AdapterSpec(kind="lora"), AdapterSpec(kind="head", num_classes=10)])
    assert DEFAULT_MODES["lora"] == "hooks" and choose_mode(both) == "inline"
    r = train_dp_sgd(both, _data(), ledger=ledger, run="r", round=1, subject="c", seed=0,
                     config=DPSGDConfig(batch_size=8, steps=1, noise_multiplier=1.0))
    assert r.grad_sample_mode == "inline"


@pytest.mark.parametrize("kind", ["head", "film", "film+lora+head"])
def test_modes_agree_on_clipped_update_multilabel(kind: str, tmp_path: Path) -> None:
    """inline, hooks and ghost clipping give the same clipped step (sigma=0, q=1) for a multi-label BCE loss.

    With several kinds, inline mixes FiLM's own per-sample gradients with Opacus' hooks on LoRA and the head;
    one clip must bound them jointly.
    """
    g = torch.Generator().manual_seed(3)
    data = TensorDataset(torch.randn(12, 1, 8, 8, generator=g), (torch.rand(12, 10, generator=g) > 0.7).float())
    loss = nn.BCEWithLogitsLoss()
    steps = {}
    with PrivacyLedger(tmp_path / "l.db") as ledger:
        ledger.open_run("free", epsilon=math.inf, delta=1e-5)
        for mode in ("inline", "hooks", "ghost"):
            model = _model(kind)
            before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
            cfg = DPSGDConfig(batch_size=12, steps=1, lr=1.0, max_grad_norm=0.05, noise_multiplier=0.0,
                              grad_sample_mode=mode)
            train_dp_sgd(model, data, ledger=ledger, run="free", round=1, subject=mode, config=cfg, loss_fn=loss)
            after = [p.detach() for p in model.parameters() if p.requires_grad]
            steps[mode] = torch.cat([(a - b).flatten() for a, b in zip(after, before)])
    assert loss.reduction == "mean"  # the caller's loss is not modified
    assert steps["hooks"].norm() <= 0.05 * (1 + 1e-4)  # mean of 12 clipped grads, lr 1
    assert torch.allclose(steps["hooks"], steps["ghost"], atol=1e-6, rtol=1e-4)
    assert torch.allclose(steps["hooks"], steps["inline"], atol=1e-6, rtol=1e-4)


def test_empty_poisson_batches_still_take_noised_steps(tmp_path: Path) -> None:
    """N=3, q=1/3: about 30% of draws are empty; every step must still move the parameters (noise)."""
    data = TensorDataset(torch.randn(3, 5), torch.randint(0, 3, (3,)))
    with PrivacyLedger(tmp_path / "l.db") as ledger:
        ledger.open_run("r", epsilon=1e9, delta=1e-5)
        for mode in ("inline", "hooks", "ghost"):
            torch.manual_seed(0)
            model = nn.Linear(5, 3)
            snaps = [model.weight.detach().clone()]

            def snap(i: int, loss: float, s: list[torch.Tensor] = snaps, m: nn.Linear = model) -> None:
                s.append(m.weight.detach().clone())

            cfg = DPSGDConfig(batch_size=1, steps=30, lr=0.1, noise_multiplier=1.0, grad_sample_mode=mode)
            r = train_dp_sgd(model, data, ledger=ledger, run="r", round=1, subject=mode, config=cfg, seed=0,
                             on_step=snap)
            assert r.steps == 30 and r.sample_rate == pytest.approx(1 / 3)
            assert all(not torch.equal(a, b) for a, b in zip(snaps, snaps[1:]))


def test_spend_is_written_ahead_of_training(tmp_path: Path) -> None:
    """If training fails midway, the planned spend is already durable (conservative accounting)."""
    calls = []

    def boom(step: int, loss: float) -> None:
        calls.append(step)
        raise RuntimeError("device lost")

    with PrivacyLedger(tmp_path / "l.db") as ledger:
        ledger.open_run("r", epsilon=20.0, delta=1e-5)
        with pytest.raises(RuntimeError, match="device lost"):
            train_dp_sgd(_model("head"), _data(), ledger=ledger, run="r", round=4, subject="c", on_step=boom,
                         config=DPSGDConfig(batch_size=8, steps=5, noise_multiplier=1.0))
        assert calls == [1]
        (spend,) = ledger.spends("r")
        assert (spend.round, spend.steps) == (4, 5)


@pytest.mark.slow
@pytest.mark.parametrize("arch,size", [("vit_tiny", 16), ("resnet18_gn", 32)])
@pytest.mark.parametrize("kind", ["film", "lora", "head"])
def test_every_zoo_backbone(arch: str, size: int, kind: str, ledger: PrivacyLedger) -> None:
    torch.manual_seed(0)
    kwargs = {"img_size": size} if arch == "vit_tiny" else {}
    model = create_model(arch, num_classes=10, in_chans=1, **kwargs)
    inject(model, [AdapterSpec(kind="head", num_classes=10)] if kind == "head" else [AdapterSpec(kind=kind)])
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    adapters = set(adapter_names(model))
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(8, 1, size, size, generator=g), torch.randint(0, 10, (8,), generator=g))
    r = train_dp_sgd(model, data, ledger=ledger, run="r", round=1, subject=f"{arch}-{kind}", seed=0,
                     config=DPSGDConfig(batch_size=4, steps=2, lr=0.5, noise_multiplier=1.0))
    after = model.state_dict()
    assert r.steps == 2
    assert any(not torch.equal(before[k], after[k]) for k in adapters)
    assert all(torch.equal(before[k], after[k]) for k in set(before) - adapters)
    assert _hook_count(model) == 0


def test_film_clipped_step_equals_per_example_reference(ledger: PrivacyLedger) -> None:
    """FiLM, every mode, q=1, sigma=0: the step is -lr * mean_i g_i * min(1, C/|g_i|) exactly.

    The inline default also splits the batch (max_physical_batch_size=4), so two backward passes stack.
    """
    from fedge.adapters import adapter_parameters

    data, clip, lr = _data(n=6, size=12, seed=4), 0.05, 1.0
    model = _model("film")
    params = adapter_parameters(model)
    clipped = []
    for i in range(len(data)):
        model.zero_grad()
        nn.CrossEntropyLoss()(model(data.tensors[0][i : i + 1]), data.tensors[1][i : i + 1]).backward()
        g = torch.cat([p.grad.flatten() for p in params])
        clipped.append(g * min(1.0, clip / (g.norm().item() + 1e-6)))
    assert max(c.norm() for c in clipped) == pytest.approx(clip, rel=1e-4)  # the bound binds
    model.zero_grad(set_to_none=True)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    ledger.open_run("free", epsilon=math.inf, delta=1e-5)
    for mode in ("auto", "hooks", "functorch", "ghost"):
        model.load_state_dict(start)
        before = torch.cat([p.detach().flatten() for p in params])
        cfg = DPSGDConfig(batch_size=6, steps=1, lr=lr, max_grad_norm=clip, noise_multiplier=0.0,
                          grad_sample_mode=mode, max_physical_batch_size=4 if mode == "auto" else 256)
        r = train_dp_sgd(model, data, ledger=ledger, run="free", round=1, subject=mode, config=cfg, seed=0)
        assert r.grad_sample_mode == ("inline" if mode == "auto" else mode)
        step = torch.cat([p.detach().flatten() for p in params]) - before
        torch.testing.assert_close(step, -lr * torch.stack(clipped).mean(0), rtol=1e-4, atol=1e-7, msg=mode)
        assert not any(getattr(m, "per_sample", None) for m in model.modules())  # reset on the way out
        assert not any(hasattr(p, "grad_sample") for p in model.parameters())


def test_tensor_batches_draw_the_same_poisson_batches(ledger: PrivacyLedger) -> None:
    """The batched TensorDataset path samples exactly what Opacus' per-example path samples."""
    from torch.utils.data import Dataset

    class PerExample(Dataset):
        def __init__(self, data: TensorDataset) -> None:
            self.data = data

        def __len__(self) -> int:
            return len(self.data)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
            return self.data[i]

    data = _data(n=40)
    states = []
    for i, ds in enumerate((data, PerExample(data))):
        model = _model("film")
        cfg = DPSGDConfig(batch_size=8, steps=6, lr=0.5, noise_multiplier=1.0)
        train_dp_sgd(model, ds, ledger=ledger, run="r", round=1, subject=f"s{i}", config=cfg, seed=7)
        states.append(model.state_dict())
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=0, atol=0)
