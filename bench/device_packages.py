"""This environment cut down to what the GPU machine imports: its package list (the device tool's
KINDS.md) and the wheels bench/gpu_checks.py carries (bench/gpu_wheels.sh), so a device script's
imports are tried here before a lent machine's minutes are spent.

    .venv/bin/python bench/device_packages.py /tmp/device_site
    PYTHONPATH=/tmp/device_site/startup .venv/bin/python bench/gpu_hdbet_faithfulness.py ...

``/tmp/device_site/packages`` holds links to this environment's packages of those distributions
alone; ``/tmp/device_site/startup/sitecustomize.py`` puts it in place of site-packages, so any
other package (SimpleITK, pydantic, appdirs, ...) is missing as it is there.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import shutil
import site
from pathlib import Path

KINDS = Path("/work/.library/device/KINDS.md")
CARRIED = (  # what bench/gpu_wheels.sh fetches
    "monai nnunetv2 dynamic_network_architectures batchgenerators blosc2 msgpack ndindex nibabel threadpoolctl httpx "
    "idna acvl_utils"
).split()


def normalised(name: str) -> str:
    """A distribution's name as the package index compares it."""
    return re.sub(r"[-_.]+", "-", name.strip().rstrip(".")).lower()


def device_distributions() -> set[str]:
    """The GPU machine's Python distributions (KINDS.md's list) and the carried wheels."""
    listed = KINDS.read_text().split("Packages: ", 1)[1].split("\n", 1)[0]
    return {normalised(n) for n in listed.split(",")} | {normalised(n) for n in CARRIED}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    folder = parser.parse_args().folder
    shutil.rmtree(folder, ignore_errors=True)
    packages, startup = folder / "packages", folder / "startup"
    packages.mkdir(parents=True)
    startup.mkdir()
    allowed, installed = device_distributions(), Path(site.getsitepackages()[0])
    for distribution in metadata.distributions():
        if normalised(distribution.metadata["Name"]) not in allowed:
            continue
        for top in {str(f).split("/")[0] for f in distribution.files or []}:
            source, link = installed / top, packages / top
            if not top.startswith("..") and source.exists() and not link.exists():
                link.symlink_to(source)
    (startup / "sitecustomize.py").write_text(
        '"""The GPU machine\'s packages alone (bench/device_packages.py)."""\n'
        "import sys\n\n"
        f'sys.path[:] = [p for p in sys.path if "site-packages" not in p] + [{str(packages)!r}]\n'
    )
    print(f"{len(list(packages.iterdir()))} packages linked; use PYTHONPATH={startup}")


if __name__ == "__main__":
    main()
