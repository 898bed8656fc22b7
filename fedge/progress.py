"""Progress bars for long work (tqdm), silent when disabled or when stderr is not a terminal in CI."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress_bar(items: Iterable[T], desc: str = "", enabled: bool = True, total: int | None = None) -> Iterator[T]:
    """Wrap ``items`` in a tqdm bar when ``enabled`` (and not ``FEDGE_NO_PROGRESS=1``)."""
    if not enabled or os.environ.get("FEDGE_NO_PROGRESS") == "1":
        yield from items
        return
    from tqdm.auto import tqdm

    yield from tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True, mininterval=0.5)
