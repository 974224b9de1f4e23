"""Findings, "why here?" and probabilities in ``explain`` (:class:`FindingOptions`, the ``findings``
field of its options), and the finding size limits ``evaluate --findings`` shares. Torch-free, like
the options that hold them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from .declared_options import CommandOptions, option
from .errors import SegGradCAMError


def _point(value: Any) -> tuple[float, float, float] | None:
    """``R,A,S`` (mm) -> three floats; a bad one (an empty one too) is a one-line error."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    try:
        point = tuple(float(v) for v in items)
    except (TypeError, ValueError):
        point = ()
    if len(point) != 3 or not all(math.isfinite(v) for v in point):
        raise SegGradCAMError(f"--point takes R,A,S in mm (three numbers, e.g. 12.5,-30,8); got {value!r}.")
    return point  # type: ignore[return-value]


def min_finding_option() -> Any:
    """``--min-finding-mm3``, shared by ``explain`` and ``evaluate``."""
    return option("--min-finding-mm3", 10.0, "findings: smallest component explained, in mm³ (default 10)", type=float)


def max_findings_option() -> Any:
    """``--max-findings``, shared by ``explain`` and ``evaluate``."""
    return option("--max-findings", 20, "findings: explain at most this many, the largest (default 20)", type=int)


def check_finding_limits(min_finding_mm3: float, max_findings: int) -> None:
    """``--min-finding-mm3`` >= 0 and ``--max-findings`` >= 1."""
    if not (min_finding_mm3 >= 0 and math.isfinite(min_finding_mm3)):
        raise SegGradCAMError(f"--min-finding-mm3 must be >= 0; got {min_finding_mm3}.")
    if max_findings < 1:
        raise SegGradCAMError(f"--max-findings must be >= 1; got {max_findings}.")


@dataclass(frozen=True)
class FindingOptions(CommandOptions):
    """``--findings`` (each connected component of each class explained on its own), its size limits,
    ``--point`` (explain the finding at a point) and the probability and entropy maps."""

    GROUP: ClassVar[str | None] = "findings (see docs/findings.md)"

    findings: bool = option(
        "--findings",
        False,
        "explain every finding (26-connected component of each explained class) on its own: "
        "heatmap_<class>_f<id>.nrrd, findings.json/.csv with size, position, probability and channel reliance",
        action="store_true",
    )
    min_finding_mm3: float = min_finding_option()
    max_findings: int = max_findings_option()
    point: tuple[float, float, float] | None = option(
        "--point",
        None,
        "why here? explain only the finding containing this point (R,A,S in mm, as Slicer shows it), "
        "or the nearest within --point-radius-mm",
        normalise=_point,
        metavar="R,A,S",
    )
    point_radius_mm: float = option(
        "--point-radius-mm", 10.0, "--point: how far from the point a finding may be (default 10 mm)", type=float
    )
    probabilities: bool = option(
        "--probabilities",
        False,
        "write probability_<class>.nrrd and entropy.nrrd (on by default with --findings or --point)",
        action="store_true",
    )
    no_probabilities: bool = option(
        "--no-probabilities", False, "with --findings/--point: leave out the probability maps", action="store_true"
    )
    no_reliance: bool = option(
        "--no-reliance",
        False,
        "with --findings/--point on a multi-channel model: leave out the channel reliance (its occlusion "
        "passes and the input gradients, which make each backward pass run through the whole network)",
        action="store_true",
    )

    def __post_init__(self) -> None:
        self.normalise_fields()
        check_finding_limits(self.min_finding_mm3, self.max_findings)
        if not (self.point_radius_mm >= 0 and math.isfinite(self.point_radius_mm)):
            raise SegGradCAMError(f"--point-radius-mm must be >= 0; got {self.point_radius_mm}.")
        if self.probabilities and self.no_probabilities:
            raise SegGradCAMError("Give --probabilities or --no-probabilities, not both.")

    @property
    def wanted(self) -> bool:
        """Whether findings are explained (``--findings`` or ``--point``)."""
        return self.findings or self.point is not None

    @property
    def measures_reliance(self) -> bool:
        """Whether the channel reliance is measured (multi-channel models only)."""
        return self.wanted and not self.no_reliance

    @property
    def writes_probabilities(self) -> bool:
        """Whether the probability and entropy maps are written."""
        return self.probabilities or (self.wanted and not self.no_probabilities)
