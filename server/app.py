"""The fedge ServerApp: reads the run config and hands the Grid to :func:`fedge.server.loop.run_federation`.

Run config keys: every :class:`~fedge.server.config.FederationConfig` field with dashes, plus
``state-dir`` (where checkpoints, ledger and metrics go). ``fed-server`` submits runs with them.
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedge.errors import FedgeError
from fedge.server.checkpoint import RunStore
from fedge.server.config import FederationConfig
from fedge.server.loop import run_federation
from fedge.server.superlink import fast_pulls

app = ServerApp()
log = logging.getLogger("fedge.server")


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run (or resume) the federation described by the run config."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from flwr.superlink.grid import http_grid

    # the deployment Grid pulls replies whose objects may still be arriving (simulation grids pull nothing)
    http_grid.pull_objects = fast_pulls(http_grid.pull_objects)  # type: ignore[attr-defined]
    run_config = dict(context.run_config)
    state_dir = Path(str(run_config.get("state-dir", "fedge-run")))
    cfg = FederationConfig.from_mapping(run_config)
    store = RunStore(state_dir)
    with exclusive(state_dir / "serverapp.lock"):
        run_federation(grid, cfg, store, progress=lambda m: log.info("round %s: %s", m["round"], m))


@contextmanager
def exclusive(path: Path, timeout_s: float = 60.0) -> Iterator[None]:
    """Hold an exclusive lock on ``path``: one ServerApp per state dir, even if an old one is still dying."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise FedgeError(f"another ServerApp holds {path}; stop it before resuming") from None
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
