"""Shared fixtures: a tiny pretrained backbone in a temporary FEDGE_HOME (seconds, cached per session)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

TINY = {"pretrain-images": 300, "pretrain-epochs": 0.2}


@pytest.fixture(scope="session")
def fedge_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("fedge-home")
    old = os.environ.get("FEDGE_HOME")
    os.environ["FEDGE_HOME"] = str(home)
    from fedge.server.task import load_backbone, pretrain_config

    load_backbone(pretrain_config(TINY))
    yield home
    if old is None:
        os.environ.pop("FEDGE_HOME", None)
    else:
        os.environ["FEDGE_HOME"] = old
