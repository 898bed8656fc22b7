"""The fedge ClientApp: thin message handlers around :mod:`fedge.client.local`, with a data-source hook.

One set of handlers serves every engine; only where a node's data comes from differs. The deployment
app (:data:`app`) reads node config (``flower-supernode --node-config``, set by ``fed-client``):
``data-path`` (a ``.npz`` with the device's data), ``state-dir`` (the device's privacy ledger) and
``epsilon-budget`` (the device's own example-level budget). ``fed-sim`` builds its app with
:func:`make_app` and a hook that maps a virtual node's ``partition-id`` to a simulated user.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedge.client.local import local_evaluate, local_update
from fedge.data.base import UserData
from fedge.server.protocol import METRICS, decode_global, encode_update
from fedge.server.task import load_user_data


@dataclass(frozen=True)
class Device:
    """What the handlers need from the node a message reached."""

    data: UserData
    state_dir: str = "."  # the device's privacy ledger lives here
    epsilon_budget: float = 0.0  # the device's own example-level budget (0 = none)
    metrics: Mapping[str, float] = field(default_factory=dict)  # reported with the update (e.g. timings)


#: the data-source hook: (incoming message, node context) -> the device it reached
DeviceHook = Callable[[Message, Context], Device]


def _process_age_s() -> float:
    """Seconds since this ClientApp process started (Linux ``/proc``; 0 elsewhere): its start-up cost.

    Both ends on the boot-time clock (``/proc/uptime`` and the process start in ``/proc/self/stat``); the
    wall clock and ``btime`` drift apart by seconds on long-running machines."""
    try:
        ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        uptime = float(open("/proc/uptime").read().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def node_device(msg: Message, context: Context) -> Device:
    """A deployed SuperNode: data, ledger and budget from its node config; start-up and delivery times."""
    startup, delivery = _process_age_s(), max(0.0, time.time() - float(msg.metadata.created_at))
    node = context.node_config
    return Device(load_user_data(str(node["data-path"])), str(node.get("state-dir", ".")),
                  float(node.get("epsilon-budget", 0.0)), {"process-startup-s": startup, "delivery-s": delivery})


def handle_train(msg: Message, device: Device) -> Message:
    """Train the adapters on the device's data; reply with the delta, example count, epsilon and metrics."""
    state, hparams = decode_global(msg.content)
    delta, metrics = local_update(state, hparams, device.data, device.state_dir, device.epsilon_budget)
    metrics.update(device.metrics)
    return Message(encode_update(delta, state.backbone_hash, metrics), reply_to=msg)


def handle_evaluate(msg: Message, device: Device) -> Message:
    """Evaluate the global adapters on the device's data (federated evaluation)."""
    state, hparams = decode_global(msg.content)
    metrics = local_evaluate(state, hparams, device.data)
    return Message(RecordDict({METRICS: MetricRecord(dict(metrics.items()))}), reply_to=msg)  # type: ignore[arg-type]


def make_app(device: DeviceHook) -> ClientApp:
    """A ClientApp whose handlers take their data from ``device``."""
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        """Train the adapters on local data and reply with the delta, example count, epsilon and metrics."""
        return handle_train(msg, device(msg, context))

    @client_app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        """Evaluate the global adapters on local data (federated evaluation)."""
        return handle_evaluate(msg, device(msg, context))

    return client_app


app = make_app(node_device)
