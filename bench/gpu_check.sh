#!/usr/bin/env bash
# The prepared GPU check: real-size SDXL UNet and FLUX.1 transformer configs with random weights at 1024x1024,
# seconds per denoiser step and peak memory for bf16, torchao float8 (dynamic activations; sm_89+), torchao int8
# dynamic and weight-only, SVDQuant packed and fake-quant, each without and then with torch.compile (inductor, the
# repeated blocks, as the registry's `compile:` option does by default), plus one real-size SVDQuant decomposition
# -> bench/gpu_results.json with the GPU's name (and $OUT when set). The file is rewritten after every variant.
# Finishes in under 8 minutes: each denoiser has a time budget (variants past it are recorded as skipped) and the
# whole run is capped at 450 s.
#
#   bash bench/gpu_check.sh            on a lent GPU machine (python3 there must hold torch with CUDA)
#   bash bench/gpu_check.sh --dry-run  the same code on tiny configs on this CPU (the unit tests run it)
#
# The GPU machine has torch but neither diffusers nor torchao and cannot reach a package index: fetch their
# wheels here first with `bash bench/gpu_wheels.sh` (writes .whl/, git-ignored) and carry `.whl` to the run:
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ -x .venv/bin/python ] && [ "${1:-}" = "--dry-run" ]; then PY=.venv/bin/python; fi
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && ! "$PY" -c "import diffusers" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/atelier-site .whl/*.whl
  export PYTHONPATH="/tmp/atelier-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="gpu-workers/src:contracts/src:runtime/src:provenance/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out="bench/gpu_results.json"
extra=()
if [ "${1:-}" = "--dry-run" ]; then
  out="${GPU_CHECK_OUT:-bench/.work/gpu_results.dry-run.json}"; mkdir -p "$(dirname "$out")"; extra=(--dry-run)
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
rc=0
timeout 450 "$PY" bench/gpu_bench.py gpu "${extra[@]}" --out "$out" || rc=$?
# the JSON is rewritten after every variant: what was measured before a timeout still comes back
if [ -n "${OUT:-}" ] && [ -d "${OUT}" ] && [ -f "$out" ]; then cp "$out" "$OUT/gpu_results.json"; fi
echo "wrote $out (gpu_bench exit $rc)"
exit "$rc"
