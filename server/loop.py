"""The federated round loop over a Flower :class:`~flwr.serverapp.Grid` (deployment or simulation).

Per round: wait for enough connected nodes, sample a cohort, send the global adapters, collect replies
until the round timeout (a dead or slow client only shrinks the round), validate, aggregate (with
user-level DP), account the privacy spend, evaluate, checkpoint, and write one JSONL metrics line.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable
from typing import Any

import torch
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedge.adapters import AdapterState
from fedge.errors import FedgeError, PrivacyBudgetExceeded, ValidationError
from fedge.privacy import poisson_cohort
from fedge.server import dp
from fedge.server.checkpoint import Checkpoint, RunStore
from fedge.server.config import FederationConfig
from fedge.server.evaluation import ServerEvaluator, aggregate_client_metrics
from fedge.server.protocol import ClientUpdate, decode_update, encode_global, payload_nbytes
from fedge.server.strategy import AdapterDeltaStrategy, Rejection

log = logging.getLogger("fedge.server")
Progress = Callable[[dict[str, Any]], None]


def wait_for_nodes(grid: Grid, minimum: int, timeout_s: float, desired: int = 0, grace_s: float = 0.0) -> list[int]:
    """Connected node ids once at least ``minimum`` are online (raises after ``timeout_s``).

    Once ``minimum`` is reached, waits up to ``grace_s`` more for ``desired`` nodes (a full cohort), so a
    round does not start with the first two devices when the rest are still connecting.
    """
    start = time.monotonic()
    reached: float | None = None
    while True:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        now = time.monotonic()
        if len(nodes) >= minimum:
            reached = now if reached is None else reached
            if len(nodes) >= desired or now - reached >= grace_s:
                return nodes
        elif now - start > timeout_s:
            raise FedgeError(f"only {len(nodes)} of the {minimum} required clients connected within "
                             f"{timeout_s:.0f}s; start more fed-client processes or lower --min-clients")
        time.sleep(0.5)


def _mean(values: Any) -> float:
    vals = list(values)
    return sum(vals) / len(vals) if vals else 0.0


def _secure_generator() -> torch.Generator:
    return torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little"))


def send_round(grid: Grid, nodes: list[int], content: RecordDict, message_type: str, timeout_s: float,
               poll_s: float = 0.1) -> tuple[list[tuple[int, Message]], list[int]]:
    """Send ``content`` to ``nodes``; returns ((node, reply) pairs, nodes without a reply by ``timeout_s``).

    Replies are matched to nodes by message id (an error reply the SuperLink makes for a vanished node
    carries the SuperLink as sender). Uses the Grid's push/pull API with a short poll interval
    (``Grid.send_and_receive`` sleeps 3 s between pulls, which would dominate short rounds).
    """
    msgs = [Message(content=content, dst_node_id=n, message_type=message_type) for n in nodes]
    for m in msgs:  # the id Flower's own Grid assigns on push; set here so in-process grids agree
        m.metadata.__dict__["_message_id"] = m.object_id
    to_node = {m.metadata.message_id: n for m, n in zip(msgs, nodes)}
    ids = list(grid.push_messages(msgs))
    pending = set(ids)
    replies: list[tuple[int, Message]] = []
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        for m in grid.pull_messages(list(pending)):
            rid = m.metadata.reply_to_message_id
            if rid in pending:
                pending.discard(rid)
                replies.append((to_node.get(rid, int(m.metadata.src_node_id)), m))
        if pending:
            time.sleep(poll_s)
    answered = {n for n, _ in replies}
    return replies, [n for n in nodes if n not in answered]


def run_federation(grid: Grid, cfg: FederationConfig, store: RunStore, progress: Progress | None = None
                   ) -> AdapterState:
    """Run (or resume) the rounds of ``cfg`` and return the final global adapter state."""
    strategy = AdapterDeltaStrategy(cfg)
    evaluator = ServerEvaluator(cfg)
    ledger = dp.open_ledger(store.ledger_path, cfg.epsilon_budget, cfg.user_delta)
    loaded = store.load_checkpoint()
    if loaded is None:
        state = evaluator.initial_state()
        base = evaluator.evaluate(state)
        store.save_adapters(0, state)
        ckpt = Checkpoint(0, {"event": "baseline", "round": 0, "time": time.time(),
                              **{f"server_{k}": v for k, v in base.items()}})
        store.commit(ckpt)
        store.reconcile_metrics(None)  # a fresh run: start the metrics file empty
        store.append_metrics(ckpt.metrics)  # the zero-adaptation baseline
    else:
        ckpt, state = loaded
        store.append_metrics({"event": "resume", "from_round": ckpt.round, "time": time.time()})
    store.reconcile_metrics(ckpt)
    rng = random.Random(cfg.seed * 7919 + ckpt.round)
    full_bytes = evaluator.full_model_bytes()
    private_cohorts = cfg.user_dp and cfg.user_noise_multiplier > 0
    stopped = ""
    for r in range(ckpt.round + 1, cfg.rounds + 1):
        if cfg.user_dp:
            try:
                dp.check_round(ledger, r, cfg.user_noise_multiplier, strategy.user_sample_rate())
            except PrivacyBudgetExceeded as err:
                log.warning("stopping before round %d: %s", r, err)
                stopped = str(err)
                break
        t_round = time.perf_counter()
        valid: list[ClientUpdate] = []
        rejected: list[Rejection] = []
        content = encode_global(state, r, strategy.train_hparams(r))
        sent_bytes = payload_nbytes(content)
        attempts = 0
        for attempts in range(1, cfg.max_retries + 2):  # noqa: B007
            done = {u.node_id for u in valid}
            nodes = [n for n in wait_for_nodes(grid, cfg.min_clients, cfg.wait_for_clients_s, cfg.cohort_size,
                                               cfg.cohort_grace_s) if n not in done]
            if private_cohorts:
                # Poisson sampling with the OS RNG, as the user-level accountant assumes: each connected user
                # joins with probability q, secretly; a seeded or fixed-size cohort would void the bound.
                cohort = sorted(poisson_cohort(nodes, strategy.user_sample_rate()))
            else:
                cohort = sorted(rng.sample(nodes, min(cfg.cohort_size - len(valid), len(nodes))))
            replies, silent = send_round(grid, cohort, content, "train", cfg.round_timeout_s)
            parsed: list[ClientUpdate | Rejection] = [Rejection(n, "timeout", f"node {n} did not reply in "
                                                               f"{cfg.round_timeout_s:.0f}s") for n in silent]
            for node, msg in replies:
                try:
                    parsed.append(decode_update(msg, node))
                except ValidationError as err:
                    parsed.append(Rejection(node, err.reason, str(err)))
            ok, bad = strategy.screen(parsed, state)
            valid += ok
            rejected += bad
            if len(valid) >= cfg.min_clients or (private_cohorts and valid):
                break  # a private cohort is never topped up: that would raise a user's inclusion rate above q
            log.warning("round %d: %d valid updates < min_clients=%d, retrying (%d/%d)", r, len(valid),
                        cfg.min_clients, attempts, cfg.max_retries)
        else:
            raise FedgeError(f"round {r}: only {len(valid)} valid updates after {cfg.max_retries} retries "
                             f"(need {cfg.min_clients}); rejections: {[x.reason for x in rejected]}")
        t_agg = time.perf_counter()
        result = strategy.aggregate(state, valid, r, ledger, _secure_generator())
        t_eval = time.perf_counter()
        metrics: dict[str, Any] = {"round": r, "time": time.time(), "attempts": attempts}
        if cfg.eval_every > 0 and (r % cfg.eval_every == 0 or r == cfg.rounds):
            metrics.update({f"server_{k}": v for k, v in evaluator.evaluate(result.state).items()})
        if cfg.federated_eval:
            fed_nodes = [u.node_id for u in valid]
            eval_replies, _ = send_round(grid, fed_nodes, encode_global(result.state, r, strategy.train_hparams(r)),
                                         "evaluate", cfg.round_timeout_s)
            metrics.update({f"fed_{k}": v for k, v in aggregate_client_metrics(m for _, m in eval_replies).items()})
        t_end = time.perf_counter()
        compute = [u.metrics.get("compute-s", 0.0) for u in valid]
        metrics.update({
            "clients": len(valid), "rejected": [{"node": x.node_id, "reason": x.reason} for x in rejected],
            "num_examples": sum(u.num_examples for u in valid),
            "train_loss": sum(u.metrics.get("train-loss", 0.0) * u.num_examples for u in valid)
            / max(1, sum(u.num_examples for u in valid)),
            "client_eps_max": max((u.metrics.get("eps-spent", 0.0) for u in valid), default=0.0),
            "user_eps": result.user_eps, "noise_std": result.noise_std, "clipped": result.clipped,
            "mean_delta_norm": result.mean_delta_norm,
            "round_s": t_end - t_round, "train_phase_s": t_agg - t_round, "aggregate_s": t_eval - t_agg,
            "eval_s": t_end - t_eval, "client_compute_max_s": max(compute, default=0.0),
            "client_compute_mean_s": sum(compute) / max(1, len(compute)),
            # until the ClientApp handler ran: server->SuperNode delivery, polling and ClientApp process start
            "client_delivery_mean_s": _mean(u.metrics.get("delivery-s", 0.0) for u in valid),
            "client_process_startup_mean_s": _mean(u.metrics.get("process-startup-s", 0.0) for u in valid),
            "bytes_sent_per_client": sent_bytes,
            "bytes_received_per_client": sum(u.payload_bytes for u in valid) / max(1, len(valid)),
            "full_model_bytes": full_bytes,
        })
        store.save_adapters(r, result.state)
        ckpt = Checkpoint(r, metrics)
        store.commit(ckpt)
        store.append_metrics(metrics)
        state = result.state
        if progress is not None:
            progress(metrics)
    state.save(store.final_path())
    store.append_metrics({"event": "finished", "round": ckpt.round, "time": time.time(), "stopped": stopped,
                          "user_eps": dp.user_epsilon(ledger) if cfg.user_dp else math.inf})
    ledger.close()
    return state


__all__ = ["PrivacyBudgetExceeded", "run_federation", "send_round", "wait_for_nodes"]
