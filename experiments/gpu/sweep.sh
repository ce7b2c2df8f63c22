#!/usr/bin/env bash
# GPU call: a Hydra multirun on the packed corpus, then bring back each run's small files as one tarball.
#   device run: bash experiments/gpu/sweep.sh experiment=table6_24l model=residual,moda_depth_kv,moda seed=0,1
#   (carry .whl and data/packed; checkpoints stay on the device)
source experiments/gpu/env.sh
PACKED=$(ls -d data/packed/*/ | head -1)
# Stop the sweep before the call's limit so the tarball of what finished still comes back.
timeout "${SWEEP_TIMEOUT:-540}" python3 run.py -m "data.packed_dir=$PACKED" logger.wandb.enabled=false run_root=runs_gpu "$@" 2>&1 \
  | grep -vE "^(Epoch|Validation|Training)|it/s\]" | tee "$OUT/sweep.log" || true
tar czf "$OUT/runs.tar.gz" --exclude='*.ckpt' --exclude='wandb' runs_gpu
