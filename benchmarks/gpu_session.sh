#!/usr/bin/env bash
# Issue 14's device checks as one command for a lent GPU machine (the H200 image holds
# PyTorch, pyarrow, rich, safetensors, matplotlib, scikit-learn, requests; not the rest).
#
#   here, once:  bash benchmarks/gpu_session.sh wheels   # what the image lacks, into .whl/
#   there:       bash benchmarks/gpu_session.sh run      # carry .whl; at most 9 minutes
#
# "run" installs the wheels, runs the cuda-marked tests, then benchmarks/gpu.py (its own
# budget stops it in time), then the MovieLens quick job on the GPU, writing logs, gpu.json
# and the run's outputs under $OUT (or ./gpu-out).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS="polars==2.1.0 polars-runtime-32==2.1.0 pydantic==2.14.4 pydantic-core==2.50.5
  annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 typer==0.29.2
  annotated-doc==0.0.7 shellingham==1.5.4 deepctr-torch==0.2.9 recbole==1.2.1"
case "${1:-}" in
wheels)
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  # The image's python3 is 3.12 (the device library's KINDS.md); it has pytest and PyYAML.
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl $WHEELS
  du -sh .whl
  ;;
run)
  out="${OUT:-gpu-out}"
  mkdir -p "$out"
  site="$(mktemp -d)"  # the wheels go beside the image's packages, not into them
  python3 --version
  python3 -m pip install -q --no-index --find-links .whl --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$site" $WHEELS
  export PYTHONPATH="$site:$PWD/src" PYTHONUNBUFFERED=1
  nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
  status=0
  timeout 150 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_devices.py \
    tests/test_step.py 2>&1 | tee "$out/cuda-tests.log" || status=1
  timeout 250 python3 benchmarks/gpu.py --device cuda --budget-s 180 --json "$out/gpu.json" \
    2>&1 | tee "$out/gpu.log" || status=1
  # The protocol end to end on the GPU (every strategy kind of the quick job, FINED's
  # fallback included): wall time and AUCs, to set beside the CPU run's.
  # CUDA graphs on: what the CPU run's AUCs are set beside is then the replayed step too.
  /usr/bin/time -v timeout 110 python3 -m fined.cli run configs/movielens100k.yaml --quick \
    --device cuda --set train.cuda_graphs=true --out "$out/movielens-quick" 2>&1 \
    | tee "$out/run.log" || status=1
  exit $status
  ;;
*)
  echo "usage: $0 wheels|run" >&2
  exit 2
  ;;
esac
