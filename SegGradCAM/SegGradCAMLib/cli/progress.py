"""Progress of long commands: stage, step and time left, shown three ways.

The core calls ``progress(stage, done, total)``; :class:`ProgressReporter` turns
that into the events of the project's design (one JSON object per event)::

    {"event": "progress", "stage": "windows", "done": 3, "total": 8,
     "elapsed_s": 12.1, "eta_s": 20.2}

Cohorts add their count of failed cases to the ``cases`` stage's events (``"failed": 1``).

Every command starts with ``startup`` 0/1 and reports ``startup`` 1/1 once its imports are
done and its model is loaded.

``elapsed_s`` counts from the stage's first event (stages may interleave); ``eta_s`` = elapsed / done x
remaining, ``null`` before the first step is done. The events go to one sink:

- ``json``: one line per event on the real standard output, flushed (the Slicer
  worker and the web viewer read these); everything else printed meanwhile is
  moved to standard error (:func:`events_on_stdout`);
- ``bar``: a tqdm bar per stage on standard error (when it is a terminal);
- ``lines``: one line per finished stage on standard error (when it is not);
- ``quiet``: nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Callable, Iterator, TextIO

MODES = ("auto", "json", "quiet")


class ProgressReporter:
    """``reporter(stage, done, total)`` -> a progress event for ``sink``."""

    def __init__(self, sink: Callable[[dict], None], clock: Callable[[], float] = time.perf_counter) -> None:
        self.sink, self.clock = sink, clock
        self.started: dict[str, float] = {}  # stages interleave (windows, backward): one clock each

    def __call__(self, stage: str, done: int, total: int, **counts: int) -> None:
        now = self.clock()
        elapsed = now - self.started.setdefault(stage, now)
        eta = elapsed / done * (total - done) if done > 0 else None
        self.sink(
            {
                "event": "progress",
                "stage": stage,
                "done": int(done),
                "total": int(total),
                "elapsed_s": round(elapsed, 3),
                "eta_s": None if eta is None else round(eta, 3),
                **{k: int(v) for k, v in counts.items()},
            }
        )

    def close(self) -> None:
        closer = getattr(self.sink, "close", None)
        if closer is not None:
            closer()


class JsonLines:
    """Events as JSON lines on ``stream``, flushed one by one."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, event: dict) -> None:
        self.stream.write(json.dumps(event) + "\n")
        self.stream.flush()


class StageLines:
    """One line per finished stage: ``windows: 8/8 in 12.3 s``."""

    def __init__(self, label: str, stream: TextIO = sys.stderr) -> None:
        self.label, self.stream = label, stream

    def __call__(self, event: dict) -> None:
        if event["done"] == event["total"]:
            print(
                f"{self.label}: {event['stage']} {event['done']}/{event['total']} in {event['elapsed_s']:.1f} s"
                + _counts_text(event),
                file=self.stream,
                flush=True,
            )


class Bar:
    """tqdm bars on standard error, one per stage (stages may interleave), with the time left."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bars: dict = {}

    def __call__(self, event: dict) -> None:
        from tqdm import tqdm

        stage = event["stage"]
        if stage not in self.bars:
            size = os.get_terminal_size(sys.stderr.fileno())  # a new pty may report 0 x 0: tqdm then hides its bars
            self.bars[stage] = tqdm(
                total=event["total"],
                desc=f"{self.label} {stage}",
                unit="step",
                file=sys.stderr,
                position=len(self.bars),
                ncols=size.columns or 100,
                nrows=size.lines or 24,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}, {postfix}]",
            )
        bar = self.bars[stage]
        bar.total, bar.n = event["total"], event["done"]
        eta = event["eta_s"]
        bar.set_postfix_str(
            ("time left ?" if eta is None else f"{eta:.0f} s left") + _counts_text(event), refresh=False
        )
        bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars = {}


def _counts_text(event: dict) -> str:
    """An event's extra counts (e.g. a cohort's ``failed`` cases) as ``", 1 failed"``."""
    return "".join(
        f", {v} {k}" for k, v in event.items() if k not in ("event", "stage", "done", "total", "elapsed_s", "eta_s")
    )


def make_reporter(mode: str, label: str, events: TextIO | None = None) -> ProgressReporter | None:
    """The reporter for ``--progress MODE`` (``auto``: a bar on a terminal, else lines),
    ``None`` for ``quiet``; ``events`` is the stream for ``json``."""
    if mode == "quiet":
        return None
    if mode == "json":
        return ProgressReporter(JsonLines(events or sys.stdout))
    return ProgressReporter(Bar(label) if sys.stderr.isatty() else StageLines(label))


@contextlib.contextmanager
def events_on_stdout() -> Iterator[TextIO]:
    """Standard output reserved for events: yields a stream on the real stdout and, while
    inside, sends what anything else prints (Python or C code) to standard error."""
    sys.stdout.flush()
    saved = os.dup(1)
    events = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8")
    previous = sys.stdout
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        yield events
    finally:
        sys.stderr.flush()
        events.flush()
        os.dup2(saved, 1)
        os.close(saved)
        sys.stdout = previous
        events.close()
