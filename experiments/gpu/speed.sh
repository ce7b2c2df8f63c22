#!/usr/bin/env bash
# GPU call (issue 10): the model's GPU tests (every variant vs the fp32 reference in bf16, whole-model compile),
# then the compiled training-step benchmark of every variant; each step under its own time limit.
#   device run: TESTS="tests/gpu/test_model_gpu.py" bash experiments/gpu/speed.sh --shapes quick   (carry .whl)
source experiments/gpu/env.sh
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/nvidia-smi.txt"
if [ -n "${TESTS-tests/gpu/test_model_gpu.py}" ]; then
  timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -p no:cacheprovider --tb=short -x \
    ${TESTS-tests/gpu/test_model_gpu.py} > "$OUT/gpu_tests.txt" 2>&1 || true
  grep -E "passed|failed|Error|error" "$OUT/gpu_tests.txt" | tail -15 || true
fi
timeout "${BENCH_TIMEOUT:-330}" python3 experiments/bench/bench_train.py --compile --out "$OUT/train_compiled.md" "$@" \
  2>&1 | tee "$OUT/bench_train.log" | grep -v "^{" || true
