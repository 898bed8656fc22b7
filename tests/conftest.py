"""Shared test set-up: a private FEDGE_HOME, modest thread counts, no progress bars."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("FEDGE_NO_PROGRESS", "1")


@pytest.fixture(autouse=True)
def _fedge_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    if "FEDGE_TEST_HOME" in os.environ:
        monkeypatch.setenv("FEDGE_HOME", os.environ["FEDGE_TEST_HOME"])
    else:
        monkeypatch.setenv("FEDGE_HOME", str(tmp_path_factory.getbasetemp() / "fedge_home"))
