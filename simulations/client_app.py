"""The ClientApp a virtual SuperNode runs: :mod:`fedge.client.app`'s handlers with simulation data.

Only the data-source hook differs from deployment: a virtual SuperNode has no ``data-path``, only
``partition-id``, and trains as that user of the :class:`~fedge.simulations.data.DataSpec` in
``FEDGE_SIM_DATA``. With client-side DP-SGD each simulated user keeps its own device ledger under
``<run_dir>/devices/<user>``.
"""

from __future__ import annotations

import os
from pathlib import Path

from flwr.app import Context, Message

from fedge.client.app import Device, make_app
from fedge.errors import ConfigError
from fedge.simulations.data import ENV, DataSpec, load_user, train_user_id


def spec_from_env() -> DataSpec:
    """The run's data spec (set by the simulation driver before any worker starts)."""
    text = os.environ.get(ENV)
    if not text:
        raise ConfigError(f"{ENV} is not set: start simulations with fed-sim / fedge.simulations.run")
    return DataSpec.from_json(text)


def simulated_device(spec: DataSpec, partition_id: int) -> Device:
    """The simulated user of ``partition_id``, with its own device ledger directory."""
    user = train_user_id(spec, partition_id)
    return Device(load_user(spec, user), str(Path(spec.run_dir or ".") / "devices" / user))


def virtual_node(msg: Message, context: Context) -> Device:
    """The data-source hook of a virtual SuperNode (Flower's Simulation Engine)."""
    return simulated_device(spec_from_env(), int(context.node_config["partition-id"]))


app = make_app(virtual_node)
