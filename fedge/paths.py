"""Where fedge keeps data and cached backbones (``FEDGE_HOME``, default ``~/.cache/fedge``)."""

from __future__ import annotations

import os
from pathlib import Path


def fedge_home() -> Path:
    """Return ``$FEDGE_HOME`` (created if missing)."""
    home = Path(os.environ.get("FEDGE_HOME", Path.home() / ".cache" / "fedge")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home
