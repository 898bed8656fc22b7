"""The fedge ClientApp: thin message handlers around :mod:`fedge.client.local`.

Node config (``flower-supernode --node-config``, set by ``fed-client``): ``data-path`` (a ``.npz`` with the
device's data) and ``state-dir`` (the device's privacy ledger) and ``epsilon-budget`` (the device's own example-level budget).
"""

from __future__ import annotations

import os
import time

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedge.client.local import local_evaluate, local_update
from fedge.server.protocol import METRICS, decode_global, encode_update
from fedge.server.task import load_user_data

app = ClientApp()


def _data(context: Context):  # noqa: ANN202
    return load_user_data(str(context.node_config["data-path"]))


def _process_age_s() -> float:
    """Seconds since this ClientApp process started (Linux ``/proc``; 0 elsewhere): its start-up cost."""
    try:
        ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        boot = next(float(x.split()[1]) for x in open("/proc/stat") if x.startswith("btime"))
        return max(0.0, time.time() - (boot + ticks / os.sysconf("SC_CLK_TCK")))
    except (OSError, ValueError, IndexError, StopIteration):
        return 0.0


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the adapters on local data and reply with the delta, example count, epsilon and metrics."""
    startup, delivery = _process_age_s(), max(0.0, time.time() - float(msg.metadata.created_at))
    state, hparams = decode_global(msg.content)
    node = context.node_config
    delta, metrics = local_update(state, hparams, _data(context), str(node.get("state-dir", ".")),
                                  float(node.get("epsilon-budget", 0.0)))
    metrics.update({"process-startup-s": startup, "delivery-s": delivery})
    return Message(encode_update(delta, state.backbone_hash, metrics), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global adapters on local data (federated evaluation)."""
    state, hparams = decode_global(msg.content)
    metrics = local_evaluate(state, hparams, _data(context))
    return Message(RecordDict({METRICS: MetricRecord(dict(metrics.items()))}), reply_to=msg)  # type: ignore[arg-type]
