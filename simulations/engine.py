"""Backends that run fedge's ServerApp against simulated clients.

``ray``: Flower's Simulation Engine (:func:`flwr.simulation.run_simulation`, Ray backend) with fedge's
ServerApp main (:func:`fedge.server.app.main`, unchanged) and the simulation ClientApp. ``inprocess``: the
same ServerApp main and client handlers, with the Grid answered in this process (no Ray, no actors), for
sweeps and as the overhead-free reference. Both give virtual node ``NODE_BASE + i`` to training user ``i``
so that the server's seeded cohort sampling picks the same users in both, run after run.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any
from uuid import uuid4

from flwr.app import Context, Message, RecordDict

from fedge.simulations.data import ENV, DataSpec

NODE_BASE = 1_000_000
log = logging.getLogger("fedge.simulations")


@contextmanager
def deterministic_node_ids() -> Iterator[None]:
    """Make Flower's in-memory link state number virtual SuperNodes ``NODE_BASE + i`` in creation order.

    Flower draws node ids from ``os.urandom``; fedge's server samples cohorts from the sorted node ids with a
    seeded RNG, so random ids would give every run different cohorts. Flower 1.42 offers no switch, so the
    id source of ``InMemoryLinkState.create_node`` (its only use in that module) is swapped while the
    simulation registers its nodes.
    """
    from flwr.server.superlink.linkstate import in_memory_linkstate as ims

    original = ims.generate_rand_int_from_bytes
    counter = itertools.count(NODE_BASE)

    def _next_id(num_bytes: int, exclude: set[int] | None = None) -> int:
        n = next(counter)
        while exclude and n in exclude:
            n = next(counter)
        return n

    ims.generate_rand_int_from_bytes = _next_id  # type: ignore[assignment]
    try:
        yield
    finally:
        ims.generate_rand_int_from_bytes = original


@contextmanager
def targeted_message_polling() -> Iterator[None]:
    """Poll only nodes that have undelivered messages instead of every registered node.

    Flower 1.42's Simulation Engine (``vce_api.add_messages_to_queue``) asks the link state for messages of
    each of the N registered nodes every 0.1 s, and each ask scans all stored messages under the state's
    lock: O(N x M) per sweep, about 1,000,000 checks for 10,000 nodes and a cohort of 100, holding the
    GIL the ServerApp thread needs. This replacement finds the destination nodes in one scan and asks only
    those, with the same ``get_message_ins(node_id, limit=1)`` calls, so delivery is unchanged.
    """
    from flwr.server.superlink.fleet.vce import vce_api

    original = vce_api.add_messages_to_queue

    def _poll(state: Any, queue: Any, nodes_mapping: dict[int, int], f_stop: Any) -> None:
        while not f_stop.is_set():
            with state.lock:
                waiting = {m.metadata.dst_node_id for m in state.message_ins_store.values()
                           if m.metadata.delivered_at == ""}
            for node_id in sorted(waiting):
                if node_id in nodes_mapping:
                    for msg in state.get_message_ins(node_id=node_id, limit=1):
                        queue.put(msg)
            f_stop.wait(0.1)

    vce_api.add_messages_to_queue = _poll  # type: ignore[assignment]
    try:
        yield
    finally:
        vce_api.add_messages_to_queue = original


def _server_context(run_config: dict[str, Any]) -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config))


def backend_config(num_cpus: int, client_cpus: float, object_store_mb: int) -> dict[str, Any]:
    """Ray settings small enough for a 2-core laptop (one actor per ``client_cpus``)."""
    return {
        "init_args": {"num_cpus": num_cpus, "object_store_memory": object_store_mb * 1024 * 1024,
                      "include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False,
                      "configure_logging": False},
        "client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0},
    }


def run_ray(run_config: dict[str, Any], spec: DataSpec, num_nodes: int, num_cpus: int = 2,
            client_cpus: float = 1.0, object_store_mb: int = 128, targeted_polling: bool = True) -> None:
    """Run fedge's ServerApp main on Flower's Simulation Engine with ``num_nodes`` virtual SuperNodes."""
    import ray
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedge.server.app import main as fedge_server_main
    from fedge.simulations.client_app import app as client_app

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        # Flower's Python API has no run config: hand fedge's ServerApp the run's (deployment passes it
        # with `flwr run --run-config`).
        fedge_server_main(grid, _server_context(run_config))

    os.environ[ENV] = spec.to_json()  # Ray workers inherit the driver's environment at ray.init
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if ray.is_initialized():
        ray.shutdown()  # workers of an earlier run would carry its FEDGE_SIM_DATA
    try:
        polling = targeted_message_polling() if targeted_polling else nullcontext()
        with deterministic_node_ids(), polling:
            run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_nodes,
                           backend_config=backend_config(num_cpus, client_cpus, object_store_mb))
    finally:
        if ray.is_initialized():
            ray.shutdown()


class InProcessGrid:
    """A Grid whose virtual nodes answer in this process through :mod:`fedge.client.app`'s handlers."""

    def __init__(self, spec: DataSpec, num_nodes: int) -> None:
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.spec, self.num_nodes = spec, num_nodes
        self._pending: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        return [NODE_BASE + i for i in range(self.num_nodes)]

    def _answer(self, msg: Message) -> Message:
        from fedge.client.app import handle_evaluate, handle_train
        from fedge.simulations.client_app import simulated_device

        device = simulated_device(self.spec, int(msg.metadata.dst_node_id) - NODE_BASE)
        handler = handle_train if msg.metadata.message_type == "train" else handle_evaluate
        return handler(msg, device)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Answer every message now; the replies wait for :meth:`pull_messages`."""
        replies = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = str(uuid4())  # what Flower's InMemoryGrid does on push
            replies.append(self._answer(m))
        self._pending.update({r.metadata.reply_to_message_id: r for r in replies})
        return [r.metadata.reply_to_message_id for r in replies]

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._pending.pop(i) for i in list(message_ids) if i in self._pending]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return [self._answer(m) for m in messages]


def run_inprocess(run_config: dict[str, Any], spec: DataSpec, num_nodes: int) -> None:
    """Run fedge's ServerApp main against :class:`InProcessGrid` (same server and client code, no Ray)."""
    from fedge.server.app import main as fedge_server_main

    os.environ[ENV] = spec.to_json()
    fedge_server_main(InProcessGrid(spec, num_nodes), _server_context(run_config))  # type: ignore[arg-type]
