"""The fedge ClientApp: thin message handlers around :mod:`fedge.client.local`.

Node config (``flower-supernode --node-config``, set by ``fed-client``): ``data-path`` (a ``.npz`` with the
device's data) and ``state-dir`` (the device's privacy ledger) and ``epsilon-budget`` (the device's own example-level budget).
"""

from __future__ import annotations

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedge.client.local import local_evaluate, local_update
from fedge.server.protocol import METRICS, decode_global, encode_update
from fedge.server.task import load_user_data

app = ClientApp()


def _data(context: Context):  # noqa: ANN202
    return load_user_data(str(context.node_config["data-path"]))


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the adapters on local data and reply with the delta, example count, epsilon and metrics."""
    state, hparams = decode_global(msg.content)
    node = context.node_config
    delta, metrics = local_update(state, hparams, _data(context), str(node.get("state-dir", ".")),
                                  float(node.get("epsilon-budget", 0.0)))
    return Message(encode_update(delta, state.backbone_hash, metrics), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global adapters on local data (federated evaluation)."""
    state, hparams = decode_global(msg.content)
    metrics = local_evaluate(state, hparams, _data(context))
    return Message(RecordDict({METRICS: MetricRecord(dict(metrics.items()))}), reply_to=msg)  # type: ignore[arg-type]
