# Source on a lent GPU machine (torch/triton/lightning preinstalled, no network): add the carried wheels
# (hydra-core, omegaconf, antlr4 from .whl/) and set offline/unbuffered defaults.
# No `set -e`: a failing grep or timeout must not end a GPU call before its later steps (every step is
# written to keep what it measured).
set -o pipefail
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
