"""The progress bar of long commands: on stderr, only when stderr is a terminal."""

from __future__ import annotations

import sys
from typing import Callable


def progress_bar(label: str) -> tuple[object, Callable[[int, int], None]]:
    """A tqdm bar and its ``update(done, total)`` callback."""
    from tqdm import tqdm

    bar = tqdm(total=1, desc=label, unit="step", disable=not sys.stderr.isatty())

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update
