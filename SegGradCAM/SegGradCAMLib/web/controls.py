"""The browser viewer's checks on what the page sends: the page's state belongs to the client
(any tab can set any value, ``trame.state.set('opacity', 'abc')``), so every value the server
reads is checked for its type and range before use, and every failure of a handler is shown
on the page (never only logged, never a page waiting forever)."""

from __future__ import annotations

import functools
import inspect
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..errors import SegGradCAMError


def shown(value: Any) -> str:
    """A client's value, shortened for a message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class Number:
    """A finite number from ``low`` to ``high``."""

    title: str
    low: float = -math.inf
    high: float = math.inf

    def __call__(self, value: Any) -> float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not number or not self.low <= value <= self.high:
            limits = f"from {self.low:g} to {self.high:g}" if math.isfinite(self.high) else f"of at least {self.low:g}"
            what = limits if math.isfinite(self.low) else "(finite)"
            raise SegGradCAMError(f"{self.title} must be a number {what}; got {shown(value)}.")
        return float(value)


@dataclass(frozen=True)
class Flag:
    """True or false."""

    title: str

    def __call__(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise SegGradCAMError(f"{self.title} must be true or false; got {shown(value)}.")
        return value


@dataclass(frozen=True)
class Choice:
    """One of ``choices`` (strings), or None where ``optional``."""

    title: str
    choices: Sequence[str]
    wording: str = ""
    optional: bool = False

    def __call__(self, value: Any) -> Any:
        if (value is None and self.optional) or (isinstance(value, str) and value in self.choices):
            return value
        raise SegGradCAMError(
            f"{self.title} must be one of {self.wording or ', '.join(self.choices)}; got {shown(value)}."
        )


def heatmap_index(count: int) -> Callable[[Any], int | None]:
    """The check of the page's heatmap choice: an index into the ``count`` heatmaps shown, or None."""

    def check(value: Any) -> int | None:
        if value is None or (isinstance(value, int) and not isinstance(value, bool) and 0 <= value < count):
            return value
        raise SegGradCAMError(f"Heatmap must be one of the listed heatmaps; got {shown(value)}.")

    return check


# The display controls the server reads from the page, with their checks
CONTROLS: dict[str, Callable[[Any], Any]] = {
    "opacity": Number("Opacity", 0.0, 1.0),
    "threshold": Number("Threshold", 0.0, 1.0),
    "bg_window": Number("Window", 0.0),
    "bg_level": Number("Level"),
    "show_heatmap": Flag("Show heatmap"),
    "show_segmentation": Flag("Show segmentation"),
    "segmentation_style": Choice("Segmentation style", ("outline", "fill")),
    "faithfulness": Flag("Score faithfulness"),
    "findings": Flag("Findings"),
    "why_here": Flag("Why here?"),
}


def shown_failures(handler: Callable) -> Callable:
    """``handler`` (a method of the viewer, plain or async) with every failure shown on the page:
    a :class:`SegGradCAMError` as its one line, anything else named (its traceback in the
    server's log)."""

    def show(web, error: Exception) -> None:
        if isinstance(error, SegGradCAMError):
            web.state.error = str(error)
        else:
            logging.exception("SegGradCAM web viewer: %s failed", handler.__name__)
            web.state.error = f"Failed: {type(error).__name__}: {str(error)[:200]} (the server's log has the details)."

    if inspect.iscoroutinefunction(handler):

        @functools.wraps(handler)
        async def run_async(web, *args, **kwargs):
            with web.state:
                try:
                    return await handler(web, *args, **kwargs)
                except Exception as error:  # noqa: BLE001 - every failure is shown
                    show(web, error)

        return run_async

    @functools.wraps(handler)
    def run(web, *args, **kwargs):
        try:
            return handler(web, *args, **kwargs)
        except Exception as error:  # noqa: BLE001 - every failure is shown
            show(web, error)

    return run
