#!/usr/bin/env bash
# GPU call (issue 12): what is left of the Table 6 lr sweep and rows (experiments/gpu/table6.py), then each run's
# small files as one tarball. Relaunch the same call on the warm machine to go on where it stopped.
#   device run: bash experiments/gpu/table6.sh [table6.py args]
#   carry: .whl (hydra, omegaconf, antlr4 + lm-eval's wheels), data/table6_packed.tar.xz, data/eval.tar.xz and, when an
#   earlier call brought them back, data/compile_cache/
#   KERNEL_TESTS="<pytest -k expression>" also runs those kernel GPU tests once per machine, while jobs compile.
source experiments/gpu/env.sh
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv | tee "$OUT/nvidia-smi.txt"
[ -d data/packed ] || { mkdir -p data/packed && tar -xJf data/table6_packed.tar.xz -C data/packed; }
[ -d data/eval ] || { [ -f data/eval.tar.xz ] && mkdir -p data/eval && tar -xJf data/eval.tar.xz -C data/eval; }
PACKED=$(ls -d data/packed/*/ | head -1)
# The rows evaluate after fit: say at once whether lm-eval imports here (datasets wants pyarrow >= 24 from the image).
python3 -c "import pyarrow, datasets, lm_eval.evaluator; print('eval imports: pyarrow', pyarrow.__version__, \
  'datasets', datasets.__version__)" 2>&1 | tail -3 | tee "$OUT/eval_imports.txt"
# The runs of earlier sessions (committed under experiments/results/runs_gpu: the lr sweep, finished rows) count as
# done: copied in without overwriting what this machine already holds, so a fresh machine does not redo them.
mkdir -p runs_gpu && cp -rn experiments/results/runs_gpu/. runs_gpu/
# Compile caches (inductor's and Triton's) of an earlier call, when carried: a cold compile of the three variants
# at once took ~210 s to the first logged step, a warm one ~30 s. data/compile_cache/ holds the pieces an earlier
# call left in $OUT.
CACHES=(/tmp/torchinductor_$(id -un) "$HOME/.triton/cache")
if compgen -G "data/compile_cache/compile_cache.tar.gz.*" >/dev/null && [ ! -d "${CACHES[0]}" ]; then
  cat data/compile_cache/compile_cache.tar.gz.* | tar xzf - -C / && echo "compile caches restored: $(du -sh "${CACHES[0]}" | cut -f1)"
fi
if [ -n "${KERNEL_TESTS:-}" ] && [ ! -f runs_gpu/kernel_tests.txt ]; then
  (timeout 240 python3 -m pytest -q -p no:cacheprovider --tb=short --durations=5 tests/gpu/test_moda_kernel_gpu.py \
    -k "$KERNEL_TESTS" > runs_gpu/kernel_tests.part 2>&1; mv runs_gpu/kernel_tests.part runs_gpu/kernel_tests.txt) &
fi
python3 experiments/gpu/table6.py --budget-s "${BUDGET_S:-530}" --parallel "${PARALLEL:-3}" \
  --extra "data.packed_dir=${PACKED%/}" logger.wandb.enabled=false "$@" 2>&1 \
  | tee "$OUT/table6.log"
wait
tar czf "$OUT/runs.tar.gz" --exclude='*.ckpt' --exclude='wandb' runs_gpu
# The compile caches back in pieces under the 16 MiB a file may have (carry them in data/compile_cache/,
# within the 64 MiB a call carries: left out when over 24 MiB).
tar czf /tmp/compile_cache.tar.gz -P "${CACHES[@]}" 2>/dev/null
size=$(stat -c %s /tmp/compile_cache.tar.gz 2>/dev/null || echo 0)
echo "compile caches: $size bytes compressed" | tee -a "$OUT/nvidia-smi.txt"
if [ "$size" -gt 0 ] && [ "$size" -le $((24 * 1024 * 1024)) ]; then
  split -b 15M -d /tmp/compile_cache.tar.gz "$OUT/compile_cache.tar.gz."
fi
true
