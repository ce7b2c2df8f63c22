#!/usr/bin/env bash
# GPU call (issues 3 and 6): kernel benchmark with per-kernel profiles, an optional training-step profile,
# then the kernel GPU tests, each under its own time limit (results land in $OUT as they are made).
#   device run: ROWS=table7,table2 TRAIN="--shapes quick --variants residual,moda" bash experiments/gpu/kernel.sh
#   (carry .whl)
source experiments/gpu/env.sh
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/nvidia-smi.txt"
if [ -n "${ROWS-table7,table2}" ]; then  # ROWS= (empty) skips the kernel benchmark
  timeout ${BENCH_TIMEOUT:-300} python3 experiments/bench/bench_moda.py --rows "${ROWS:-table7,table2}" \
    --out "$OUT/moda_h100" ${BENCH_ARGS:---profile} 2>&1 | tee "$OUT/bench_moda.log" | grep -v "^{"
fi
if [ -n "${TRAIN:-}" ]; then
  timeout ${TRAIN_TIMEOUT:-200} python3 experiments/bench/bench_train.py --out "$OUT/train_h100.md" $TRAIN \
    2>&1 | tee "$OUT/bench_train.log" | grep -v "^{"
fi
if [ "${KERNEL_TESTS:-1}" = 1 ]; then
  timeout ${TEST_TIMEOUT:-240} python3 -m pytest -v -p no:xdist -p no:cacheprovider --tb=short \
    tests/gpu/test_moda_kernel_gpu.py > "$OUT/gpu_kernel_tests.txt" 2>&1 || true
  grep -E "PASSED|FAILED|Error|passed|failed" "$OUT/gpu_kernel_tests.txt" | tail -30
fi
