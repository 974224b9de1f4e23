"""Choosing what to explain: classes by name or index."""

from __future__ import annotations

from typing import Sequence

from .errors import SegGradCAMError

ALL_CLASSES = "all"


def class_indices(text: str | Sequence[int | str], labels: Sequence[str]) -> list[int]:
    """Class indices from ``"all"`` (every class but a leading ``background``), or
    names/indices (a comma-separated string or a sequence)."""
    if isinstance(text, str) and text.strip() == ALL_CLASSES:
        return [i for i, name in enumerate(labels) if i > 0 or name.lower() != "background"]
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else [str(p) for p in text]
    chosen = []
    for part in (p for p in parts if p):
        if part in labels:
            chosen.append(list(labels).index(part))
        elif part.isdigit() and int(part) < len(labels):
            chosen.append(int(part))
        else:
            raise SegGradCAMError(f"Unknown class {part!r}; valid classes: {', '.join(labels)}.")
    if not chosen:
        raise SegGradCAMError(f"No class given; valid classes: {', '.join(labels)}.")
    return chosen
