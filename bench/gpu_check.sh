#!/usr/bin/env bash
# The GPU check, one command for the first machine with CUDA (from a checkout, after
# `pip install -e '.[test,bench]'`; installs nothing):
#   bash bench/gpu_check.sh
# 1. the `gpu` tests (layer parity on CUDA, AMP training, trials packed on one GPU, predict on
#    CUDA, NCCL DDP on 2+ GPUs); 2. bench/bench_stft.py on CUDA; 3. an 8-trial search packed at
#    1, 0.5 and 0.25 GPU per trial (bench/bench_packing.py). Exits 2 at once without CUDA, else
#    with the tests' status.
set -uo pipefail
cd "$(dirname "$0")/.."

if ! python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device visible to torch (torch.cuda.is_available() is False): nothing to check" >&2
    exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c 'import torch; print("gpu_check:", torch.cuda.device_count(), "x", torch.cuda.get_device_name(0), "torch", torch.__version__)'

echo "== 1. python -m pytest -m gpu"
python -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py
tests=$?

echo "== 2. bench/bench_stft.py --device cuda"
python bench/bench_stft.py --device cuda

echo "== 3. bench/bench_packing.py (8 trials at 1, 0.5 and 0.25 GPU per trial)"
python bench/bench_packing.py --trials 8 --packings 1 0.5 0.25

exit $tests
