#!/usr/bin/env bash
# GPU call: time tasks=all (the task files in data/eval) for a Table 6-shaped checkpoint, batch_size=auto (issue 13).
#   device run: bash experiments/gpu/eval_timing.sh [time_eval.py args]   (carry .whl and data/eval)
# Before the call, here: cp -r ../shared/data/eval data/eval (../shared does not travel), and add to .whl/ the
# lm-eval wheels the GPU image lacks, for Python 3.12 (docs/EVAL.md, "Timing the full evaluation on a GPU").
source experiments/gpu/env.sh
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv | tee "$OUT/nvidia-smi.txt"
python3 experiments/eval/time_eval.py --data_dir "${EVAL_DATA:-data/eval}" --out "$OUT/time_eval.json" "$@" 2>&1 \
  | tee "$OUT/time_eval.log" | grep -v "it/s\]"
