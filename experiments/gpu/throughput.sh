#!/usr/bin/env bash
# GPU call: kernel and model GPU tests, then the training-throughput benchmark of every variant (issue 6).
#   device run: bash experiments/gpu/throughput.sh [bench_train args]   (carry .whl)
source experiments/gpu/env.sh
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv | tee "$OUT/nvidia-smi.txt"
timeout 200 python3 -m pytest -q -p no:xdist -p no:cacheprovider -rfE --tb=short tests/gpu/test_model_gpu.py \
  tests/gpu/test_moda_kernel_gpu.py 2>&1 | tail -60 > "$OUT/gpu_tests.txt" || true
tail -15 "$OUT/gpu_tests.txt"
python3 experiments/bench/bench_train.py --out "$OUT/train_throughput_h100.md" "$@" 2>&1 | tee "$OUT/bench_train.log"
