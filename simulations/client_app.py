"""The ClientApp a virtual SuperNode runs: fedge's client handlers with simulation data.

The handlers are those of :mod:`fedge.client.app` line for line (``local_update`` / ``local_evaluate`` from
:mod:`fedge.client.local`, the message codec of :mod:`fedge.server.protocol`); only the data source differs:
deployment reads ``node_config["data-path"]``, a virtual SuperNode has only ``partition-id`` and takes the
user of that index from the :class:`~fedge.simulations.data.DataSpec` in ``FEDGE_SIM_DATA``. With client-side
DP-SGD each simulated user keeps its own device ledger under ``<run_dir>/devices/<user>``.
"""

from __future__ import annotations

import os
from pathlib import Path

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedge.client.local import local_evaluate, local_update
from fedge.errors import ConfigError
from fedge.server.protocol import METRICS, decode_global, encode_update
from fedge.simulations.data import ENV, DataSpec, load_user, train_user_id

app = ClientApp()


def spec_from_env() -> DataSpec:
    """The run's data spec (set by the simulation driver before any worker starts)."""
    text = os.environ.get(ENV)
    if not text:
        raise ConfigError(f"{ENV} is not set: start simulations with fed-sim / fedge.simulations.run")
    return DataSpec.from_json(text)


def handle_train(msg: Message, spec: DataSpec, partition_id: int) -> Message:
    """What :func:`fedge.client.app.train` does, for the user of ``partition_id``."""
    state, hparams = decode_global(msg.content)
    user = train_user_id(spec, partition_id)
    device_dir = Path(spec.run_dir or ".") / "devices" / user
    delta, metrics = local_update(state, hparams, load_user(spec, user), device_dir, 0.0)
    return Message(encode_update(delta, state.backbone_hash, metrics), reply_to=msg)


def handle_evaluate(msg: Message, spec: DataSpec, partition_id: int) -> Message:
    """What :func:`fedge.client.app.evaluate` does, for the user of ``partition_id``."""
    state, hparams = decode_global(msg.content)
    metrics = local_evaluate(state, hparams, load_user(spec, train_user_id(spec, partition_id)))
    return Message(RecordDict({METRICS: MetricRecord(dict(metrics))}), reply_to=msg)  # type: ignore[arg-type]


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the adapters on this virtual node's user and reply with the delta."""
    return handle_train(msg, spec_from_env(), int(context.node_config["partition-id"]))


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global adapters on this virtual node's user."""
    return handle_evaluate(msg, spec_from_env(), int(context.node_config["partition-id"]))
