"""The round loop against an in-process Grid whose nodes run the real client code (no Flower transport)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import torch
from flwr.app import Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedge.adapters import AdapterState
from fedge.client.local import local_evaluate, local_update
from fedge.data.flair_style import FlairStyleDataset
from fedge.privacy.ledger import PrivacyLedger
from fedge.server.checkpoint import RunStore
from fedge.server.config import FederationConfig
from fedge.server.loop import run_federation
from fedge.server.protocol import METRICS, decode_global, encode_update
from fedge.server.strategy import weighted_mean

from .conftest import TINY

Behaviour = Callable[[AdapterState, dict, object], Message | RecordDict | None]


class FakeGrid:
    """Nodes answer train/evaluate by calling fedge.client.local directly; a node may misbehave."""

    def __init__(self, users: dict[int, object], bad: dict[int, Callable[[dict], dict]] | None = None) -> None:
        TaskIdentity.run_id = 1
        TaskIdentity.node_id = 0
        TaskIdentity.task_id = 1
        self.users, self.bad = users, bad or {}
        self.sent_deltas: dict[int, list[dict[str, torch.Tensor]]] = {n: [] for n in users}
        self.globals: list[AdapterState] = []

    def get_node_ids(self) -> list[int]:
        return list(self.users)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        self._replies = self._answer(messages)
        return [r.metadata.reply_to_message_id for r in self._replies]

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        out, self._replies = self._replies, []
        return out

    def _answer(self, messages: Iterable[Message]) -> list[Message]:
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            state, hp = decode_global(msg.content)
            if msg.metadata.message_type == "train":
                self.globals.append(state)
                delta, metrics = local_update(state, hp, self.users[node])
                if node in self.bad:
                    delta = self.bad[node](delta)
                self.sent_deltas[node].append(delta)
                content = encode_update(delta, state.backbone_hash, metrics)
            else:
                from flwr.app import MetricRecord

                content = RecordDict({METRICS: MetricRecord(local_evaluate(state, hp, self.users[node]))})
            TaskIdentity.node_id = node  # what a SuperNode sets for its ClientApp
            reply = Message(content, reply_to=msg)
            assert reply.metadata.src_node_id == node
            out.append(reply)
        return out


def _users(n: int) -> dict[int, object]:
    ds = FlairStyleDataset(num_users=40, seed=0)
    return {100 + i: ds.load_user(u) for i, u in enumerate(ds.user_ids("train")[:n])}


def _cfg(**kw: object) -> FederationConfig:
    base = dict(rounds=1, cohort_size=3, min_clients=2, client_dp=False, user_dp=False, eval_users=3,
                num_users=40, local_epochs=1.0, lr=0.1, pretrain_images=TINY["pretrain-images"],
                pretrain_epochs=TINY["pretrain-epochs"], round_timeout_s=5, wait_for_clients_s=1)
    base.update(kw)
    return FederationConfig(**base)  # type: ignore[arg-type]


def test_noise_off_global_is_weighted_mean_of_deltas(fedge_home: Path, tmp_path: Path) -> None:
    grid = FakeGrid(_users(3))
    store = RunStore(tmp_path / "run")
    final = run_federation(grid, _cfg(), store)  # type: ignore[arg-type]
    old = grid.globals[0]
    nodes = sorted(grid.users)
    expected = weighted_mean([grid.sent_deltas[n][0] for n in nodes], [len(grid.users[n]) for n in nodes])
    for k in old:
        torch.testing.assert_close(final[k], old[k] + expected[k], rtol=0, atol=1e-6)
    assert any(not torch.equal(final[k], old[k]) for k in old)
    m = [r for r in store.read_metrics() if r.get("round") == 1 and not r.get("event")][0]
    assert m["clients"] == 3 and m["rejected"] == [] and m["bytes_received_per_client"] < m["full_model_bytes"] / 10


def test_bad_update_is_rejected_and_round_completes(fedge_home: Path, tmp_path: Path) -> None:
    nan = lambda d: {k: torch.full_like(v, float("nan")) for k, v in d.items()}  # noqa: E731
    grid = FakeGrid(_users(3), bad={101: nan})
    store = RunStore(tmp_path / "run")
    final = run_federation(grid, _cfg(), store)  # type: ignore[arg-type]
    good = [100, 102]
    expected = weighted_mean([grid.sent_deltas[n][0] for n in good], [len(grid.users[n]) for n in good])
    old = grid.globals[0]
    for k in old:
        torch.testing.assert_close(final[k], old[k] + expected[k], rtol=0, atol=1e-6)
    m = [r for r in store.read_metrics() if r.get("round") == 1 and not r.get("event")][0]
    assert m["rejected"] == [{"node": 101, "reason": "non_finite"}] and m["clients"] == 2


def test_user_dp_records_one_spend_per_round_and_resume_is_consistent(fedge_home: Path, tmp_path: Path) -> None:
    grid = FakeGrid(_users(3))
    store = RunStore(tmp_path / "run")
    cfg = _cfg(rounds=2, user_dp=True, user_noise_multiplier=1.0, user_clip=0.5, population_size=3,
               federated_eval=False)
    run_federation(grid, cfg, store)  # type: ignore[arg-type]
    # "crash" after round 2's spend but before its commit: roll the commit record back to round 1
    ckpt = json.loads((store.dir / "checkpoint.json").read_text())
    m1 = [r for r in store.read_metrics() if r.get("round") == 1 and not r.get("event")][0]
    (store.dir / "checkpoint.json").write_text(json.dumps({**ckpt, "round": 1, "metrics": m1}))
    run_federation(grid, cfg, store)  # type: ignore[arg-type]
    with PrivacyLedger(store.ledger_path) as ledger:
        rounds = [s.round for s in ledger.spends("federation")]
        eps = ledger.epsilon("federation", "population")
    assert rounds == [1, 2]
    lines = [r for r in store.read_metrics() if "round" in r and not r.get("event")]
    assert [r["round"] for r in lines] == [1, 2]  # each round once (the round-0 baseline is an event line)
    assert lines[-1]["user_eps"] == pytest.approx(eps)
    assert 0 < eps < float("inf")


def test_client_dp_sgd_reports_epsilon_from_device_ledger(fedge_home: Path, tmp_path: Path) -> None:
    users = _users(1)
    data = next(iter(users.values()))
    cfg = _cfg(client_dp=True, client_noise_multiplier=1.0)
    from fedge.server.evaluation import ServerEvaluator
    from fedge.server.strategy import AdapterDeltaStrategy

    state = ServerEvaluator(cfg).initial_state()
    hp = {**AdapterDeltaStrategy(cfg).train_hparams(1), "round": 1}
    delta, metrics = local_update(state, hp, data, tmp_path / "device")
    assert 0 < metrics["eps-spent"] < float("inf") and metrics["steps"] >= 1
    assert set(delta) == set(state) and all(torch.isfinite(v).all() for v in delta.values())
    with PrivacyLedger(tmp_path / "device" / "privacy-ledger.sqlite") as ledger:
        assert ledger.epsilon("federation", "device") == pytest.approx(metrics["eps-spent"])


def test_user_budget_stops_the_run_before_it_is_exceeded(fedge_home: Path, tmp_path: Path) -> None:
    grid = FakeGrid(_users(2))
    kw = dict(user_dp=True, user_noise_multiplier=1.0, user_clip=0.5, population_size=2, cohort_size=2,
              federated_eval=False, eval_users=0)
    first = RunStore(tmp_path / "one")
    run_federation(grid, _cfg(**kw), first)  # type: ignore[arg-type]
    eps1 = [m for m in first.read_metrics() if m.get("round") == 1 and not m.get("event")][0]["user_eps"]
    store = RunStore(tmp_path / "capped")
    run_federation(grid, _cfg(rounds=3, epsilon_budget=eps1 * 1.01, **kw), store)  # type: ignore[arg-type]
    finished = [m for m in store.read_metrics() if m.get("event") == "finished"][-1]
    assert finished["round"] == 1 and "budget" in finished["stopped"]
    with PrivacyLedger(store.ledger_path) as ledger:
        assert [s.round for s in ledger.spends("federation")] == [1]
        assert ledger.epsilon("federation", "population") <= eps1 * 1.01


def test_user_dp_cohorts_are_poisson_sampled_at_the_accounted_rate(fedge_home: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import fedge.server.loop as loop

    calls: list[tuple[list[int], float]] = []
    real = loop.poisson_cohort

    def recording(nodes, rate, rng=None):  # type: ignore[no-untyped-def]
        calls.append((list(nodes), rate))
        return real(nodes, rate, rng)

    monkeypatch.setattr(loop, "poisson_cohort", recording)
    grid = FakeGrid(_users(3))
    cfg = _cfg(rounds=2, user_dp=True, user_noise_multiplier=1.0, user_clip=0.5, population_size=3,
               federated_eval=False)
    run_federation(grid, cfg, RunStore(tmp_path / "run"))  # type: ignore[arg-type]
    assert [rate for _, rate in calls] == [1.0, 1.0]  # one draw per round at q = cohort / population, no top-up
    assert all(sorted(nodes) == sorted(grid.users) for nodes, _ in calls)
