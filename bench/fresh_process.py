"""Shared by the benchmarks that measure each configuration in a fresh process."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path


def in_fresh_process(script: str, *arguments: str) -> dict:
    """Run ``script --one ARGUMENTS`` in a new interpreter; its last stdout line is the JSON result."""
    proc = subprocess.run([sys.executable, script, "--one", *arguments], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def measured(run) -> dict:
    """``run()``'s wall time and the peak resident memory it added to this process (MiB)."""
    import resource

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": round(seconds, 2), "peak_above_start_mb": round((peak - baseline) / 1024)}


def write_report(out: Path | None, runs: list[dict]) -> dict:
    """The runs with torch's version and threads, the machine and the date; written to ``out``."""
    import torch

    report = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
        "runs": runs,
    }
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
    return report
