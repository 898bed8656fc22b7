"""The fedge ServerApp: reads the run config and hands the Grid to :func:`fedge.server.loop.run_federation`.

Run config keys: every :class:`~fedge.server.config.FederationConfig` field with dashes, plus
``state-dir`` (where checkpoints, ledger and metrics go). ``fed-server`` submits runs with them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedge.server.checkpoint import RunStore
from fedge.server.config import FederationConfig
from fedge.server.loop import run_federation

app = ServerApp()
log = logging.getLogger("fedge.server")


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run (or resume) the federation described by the run config."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run_config = dict(context.run_config)
    state_dir = Path(str(run_config.get("state-dir", "fedge-run")))
    cfg = FederationConfig.from_mapping(run_config)
    store = RunStore(state_dir)
    run_federation(grid, cfg, store, progress=lambda m: log.info("round %s: %s", m["round"], m))
