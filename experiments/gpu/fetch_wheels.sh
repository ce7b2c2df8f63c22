#!/usr/bin/env bash
# CPU side, once per checkout: the wheels a lent GPU machine (Python 3.12, torch/triton/lightning preinstalled, no
# network) needs besides its image, into .whl/ (~12 MB), which every GPU call carries and experiments/gpu/env.sh
# installs: hydra (hydra-core, omegaconf, antlr4, the joblib launcher for PARALLEL) and lm-eval with what it imports
# that the image lacks (docs/EVAL.md). Versions from constraints.txt, the ones CI tests.
#   bash experiments/gpu/fetch_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
PACKAGES=(hydra-core omegaconf hydra-joblib-launcher joblib lm-eval datasets dill multiprocess pytablewriter
          dataproperty mbstrdecoder pathvalidate tabledata tcolorpy typepy chardet pytz)
pins=()
for p in "${PACKAGES[@]}"; do
  pin=$(grep -i "^${p}==" constraints.txt) || { echo "fetch_wheels.sh: $p is not pinned in constraints.txt" >&2; exit 2; }
  pins+=("$pin")
done
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .whl "${pins[@]}"
# antlr4's runtime (hydra's parser) is published as a source archive only: built here (pure Python).
"$PY" -m pip wheel -q --no-deps -w .whl "$(grep -i '^antlr4-python3-runtime==' constraints.txt)"
# lm-eval's wheel is 9.2 of the 12 MB, nearly all of it the YAML of its ~15,000 bundled task files. moda-lab's
# tasks are its own (moda_lab/eval/tasks, include_defaults=False), so the wheel travels without lm_eval/tasks/*/:
# 0.3 MB, which leaves a call room for compile-cache files (experiments/gpu/table6.sh). RECORD loses the same lines.
"$PY" - .whl/lm_eval-*.whl <<'PYEOF'
import sys, zipfile
from pathlib import Path
path = Path(sys.argv[1])
def bundled(name): return name.startswith("lm_eval/tasks/") and name.count("/") > 2
with zipfile.ZipFile(path) as src:
    items = [(i, src.read(i)) for i in src.infolist() if not bundled(i.filename)]
slim = path.with_suffix(".slim")
with zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as out:
    for info, data in items:
        if info.filename.endswith(".dist-info/RECORD"):
            data = b"".join(l for l in data.splitlines(True) if not bundled(l.decode().split(",")[0]))
        out.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
before = path.stat().st_size
slim.replace(path)
print(f"fetch_wheels.sh: {path.name} without its bundled tasks: {before / 1e6:.1f} -> {path.stat().st_size / 1e6:.1f} MB")
PYEOF
ls .whl | wc -l | xargs echo "fetch_wheels.sh: wheels in .whl:"
du -sh .whl
