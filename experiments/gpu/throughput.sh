#!/usr/bin/env bash
# GPU call: model-level GPU tests, then the training-throughput benchmark of every variant (issue 6).
#   device run: bash experiments/gpu/throughput.sh   (carry .whl)
source experiments/gpu/env.sh
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv | tee "$OUT/nvidia-smi.txt"
python3 -m pytest -q -p no:xdist -p no:cacheprovider tests/gpu/test_model_gpu.py 2>&1 | tail -25 | tee "$OUT/gpu_model_tests.txt"
python3 experiments/bench/bench_train.py --out "$OUT/train_throughput_h100.md" "$@" 2>&1 | tee "$OUT/bench_train.log"
