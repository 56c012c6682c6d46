#!/usr/bin/env bash
# Fetch the wheels bench/gpu_check.sh needs on the GPU machine (it has torch, no diffusers/torchao, no network;
# pyyaml in case it lacks it: the registry reads models.yaml)
# into .whl/ (ignored by git through .git/info/exclude). Run here, then carry ".whl" with the device run.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PIP="${PIP:-.venv/bin/pip}"
"$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 importlib_metadata==10.2.0 torchao==0.18.0 pyyaml==6.0.4
ls -la .whl
