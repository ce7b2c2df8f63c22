#!/usr/bin/env bash
# GPU call: kernel and model GPU tests, then the training-throughput benchmark of every variant (issue 6).
#   device run: bash experiments/gpu/throughput.sh [bench_train args]   (carry .whl)
source experiments/gpu/env.sh
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv | tee "$OUT/nvidia-smi.txt"
timeout ${TEST_TIMEOUT:-200} python3 -m pytest -v -p no:xdist -p no:cacheprovider --maxfail=${MAXFAIL:-4} --tb=short \
  ${GPU_TESTS:-tests/gpu} > "$OUT/gpu_tests.txt" 2>&1 || true
grep -E "PASSED|FAILED|Error|error|passed|failed" "$OUT/gpu_tests.txt" | tail -40
python3 experiments/bench/bench_train.py --out "$OUT/train_throughput_h100.md" "$@" 2>&1 | tee "$OUT/bench_train.log" | grep -v "^{"
