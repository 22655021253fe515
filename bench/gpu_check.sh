#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md in one call (a lent GPU machine with PyTorch but not this project's
# other packages): wheels from .whl/ when present, the first cracksight val photo from .gpudata/ for
# the tiler bench (linked as ../shared/data only for that bench, so the tests skip real data), logs
# under $OUT (default outputs/gpu_check).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu_check}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PROJECT_ROOT=$PWD
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi -L; python3 -c "import torch, segmentation_models_pytorch as smp; print(torch.__version__, smp.__version__, torch.cuda.get_device_name())"
step() { local name=$1 limit=$2; shift 2; echo "== $name"; local t=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "rc=$? ${name} $((SECONDS - t)) s"; tail -n 3 "$OUT/$name.log"; }
linked=
if [ -d .gpudata ] && [ ! -e ../shared/data ]; then
  mkdir -p ../shared && ln -s "$PWD/.gpudata" ../shared/data && linked=1
  trap '[ -n "$linked" ] && rm -f ../shared/data' EXIT
fi
step tiler 100 python3 bench/tiler_bench.py --device cuda --rounds 3
if [ -n "$linked" ]; then rm -f ../shared/data; linked=; fi
step batch 300 python3 bench/batch_bench.py --count 12 --size 4000x3000 --big 2 --modes true,writers=1 true \
    upscale_below_px=null
step pytest ${PYTEST_LIMIT:-120} python3 -m pytest -q -x -p no:cacheprovider -n 8 tests
