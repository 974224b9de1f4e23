"""How a cohort of ``explain`` or ``evaluate`` runs: in this process one case after another, or
as Ray tasks (:class:`EngineOptions`, the ``engine`` field of both commands' options).
Torch-free, like the options that hold it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .declared_options import CommandOptions, option
from .errors import SegGradCAMError

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class EngineOptions(CommandOptions):
    """How a cohort runs: ``engine``; for Ray, the cluster to join (``None``: a local instance on
    127.0.0.1 that stops at the end), the local instance's number of concurrent cases, the
    resources per case and the retries of a case whose worker died."""

    GROUP: ClassVar[str | None] = "cohorts (a list of cases; see docs/cohorts.md)"

    engine: str = option(
        "--engine",
        "local",
        "local: one case after another in this process; ray: Ray tasks, one per case",
        choices=ENGINES,
    )
    ray_address: str | None = option(
        "--ray-address",
        None,
        "join an existing Ray cluster ('auto' or host:port); "
        "without it a local Ray instance starts on 127.0.0.1 and stops at the end",
        metavar="ADDRESS",
    )
    workers: int | None = option(
        "--workers",
        None,
        "local Ray instance: cases at once (default: as many as the CPUs allow)",
        type=int,
        metavar="N",
    )
    cpus_per_case: float = option("--cpus-per-case", 1.0, "Ray: CPUs each case reserves (default 1)", type=float)
    gpus_per_case: float = option(
        "--gpus-per-case",
        0.0,
        "Ray: GPUs each case reserves, fractions allowed (e.g. 0.25); > 0 runs the cases on the GPU",
        type=float,
    )
    max_retries: int = option(
        "--max-retries", 2, "Ray: re-runs of a case whose worker process died (killed, out of memory)", type=int
    )

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise SegGradCAMError(f"Unknown engine {self.engine}; choose from {', '.join(ENGINES)}.")
        if self.cpus_per_case <= 0 or self.gpus_per_case < 0 or self.max_retries < 0:
            raise SegGradCAMError("--cpus-per-case must be > 0, --gpus-per-case and --max-retries >= 0.")
        if self.workers is not None and (self.workers < 1 or self.ray_address is not None):
            raise SegGradCAMError("--workers (>= 1) sizes the local Ray instance; leave it out with --ray-address.")
        if self.engine == "local" and (self.ray_address or self.workers or self.gpus_per_case):
            raise SegGradCAMError("--ray-address, --workers and --gpus-per-case need --engine ray.")

    def case_device(self, device: str) -> str:
        """The device each case asks for: with Ray and ``auto``, the GPU when cases reserve one, else
        the CPU (Ray's accounting decides who uses a GPU); otherwise ``device`` as given."""
        if self.engine == "ray" and device == "auto":
            return "cuda" if self.gpus_per_case > 0 else "cpu"
        return device
