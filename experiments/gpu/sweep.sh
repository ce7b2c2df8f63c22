#!/usr/bin/env bash
# GPU call: a Hydra multirun on the packed corpus, then bring back each run's small files as one tarball.
#   device run: bash experiments/gpu/sweep.sh experiment=table6_24l model=residual,moda_depth_kv,moda seed=0,1
#   (carry .whl and data/packed; checkpoints stay on the device)
#   PARALLEL=3 runs three jobs at once on the one GPU (hydra/launcher=parallel; .whl must hold the
#   hydra_joblib_launcher and joblib wheels): their compiles overlap, and each fills the others' host stalls.
source experiments/gpu/env.sh
PACKED=$(ls -d data/packed/*/ | head -1)
# Stop the sweep before the call's limit so the tarball of what finished still comes back.
LAUNCH=()
if [ -n "${PARALLEL:-}" ]; then LAUNCH=(hydra/launcher=parallel "hydra.launcher.n_jobs=$PARALLEL"); fi
timeout "${SWEEP_TIMEOUT:-540}" python3 run.py -m "${LAUNCH[@]}" "data.packed_dir=$PACKED" logger.wandb.enabled=false run_root=runs_gpu "$@" 2>&1 \
  | grep -vE "^(Epoch|Validation|Training)|it/s\]" | tee "$OUT/sweep.log" || true
tar czf "$OUT/runs.tar.gz" --exclude='*.ckpt' --exclude='*.ckpt.tmp' --exclude='wandb' runs_gpu
