#!/usr/bin/env bash
# GPU call (issue 11): the kernel GPU tests of every schedule (fused, hybrid with cuDNN, hybrid with flash; pinned
# configs), then the kernel benchmark with the hybrid columns; each step under its own time limit, results in $OUT.
#   device run: ROWS=table7,table2 bash experiments/gpu/hybrid.sh
source experiments/gpu/env.sh
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/nvidia-smi.txt"
if [ "${KERNEL_TESTS:-1}" = 1 ]; then
  MODA_GPU_TEST_LOG="$OUT/gpu_kernel_cases.txt" timeout "${TEST_TIMEOUT:-200}" python3 -m pytest -q -p no:cacheprovider \
    --tb=short --durations=5 tests/gpu/test_moda_kernel_gpu.py > "$OUT/gpu_kernel_tests.txt" 2>&1
  tail -25 "$OUT/gpu_kernel_tests.txt"
fi
if [ -n "${ROWS-table7,table2}" ]; then
  timeout "${BENCH_TIMEOUT:-330}" python3 experiments/bench/bench_moda.py --rows "${ROWS:-table7,table2}" \
    --out "$OUT/moda_h200" --budget-ms "${BUDGET_MS:-200}" ${BENCH_ARGS:---profile} > "$OUT/bench_moda.log" 2>&1
  grep -v "^{" "$OUT/bench_moda.log" | tail -30
fi
true
