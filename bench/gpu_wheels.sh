#!/usr/bin/env bash
# The wheels bench/gpu_checks.py carries to the GPU machine (.whl/, ignored): what its parts import and
# that machine lacks, at the versions of .venv, for its Python 3.12 on x86-64. acvl_utils has no
# wheel on the index and is built from its sdist. Prints the total with the tracked tree's size,
# against the 64 MiB one call carries.
set -euo pipefail
cd "$(dirname "$0")/.."
# the list is bench/device_packages.py's CARRIED
PACKAGES=$(.venv/bin/python -c "import sys; sys.path.insert(0, 'bench'); from device_packages import CARRIED; print(*CARRIED)")
rm -rf .whl && mkdir -p .whl
version() { .venv/bin/python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
for name in ${PACKAGES//acvl_utils/}; do
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$name==$(version "$name")"
done
.venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w .whl "acvl_utils==$(version acvl_utils)"
ls -l .whl
wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
echo "wheels ${wheels} bytes + tracked tree ${tree} bytes = $((wheels + tree)) of $((64 * 1024 * 1024))"
