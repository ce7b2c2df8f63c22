#!/usr/bin/env bash
# CPU side, before the GPU calls: build the Table 6 corpus (conf/data/table6.yaml), pack its tokens and write
# data/table6_packed.tar.xz (~23 MiB: the packed folder, train.bin xz-compressed to ~32%), small enough to carry
# to the GPU machine (64 MiB per call). Needs the Debian packages named in conf/data/table6.yaml (root: apt-get).
#   bash experiments/gpu/pack_table6.sh            # then PACKED_ARCHIVE=data/table6_packed.tar.xz, carried
# The GPU rows train on the committed build instead (experiments/gpu/corpus/README.md: the Debian packages move,
# and so does a rebuilt corpus); this script says whether a rebuild gave that build's fingerprint.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
mkdir -p data  # tee below writes there before the build makes it
$PY -m moda_lab.data out=data/corpus_table6 sources=python-docs,stdlib,linux-docs,manpages,devdocs,site-packages \
  vocab_size=50304 | tee data/table6_build.txt
PACKED=$(tail -1 data/table6_build.txt | awk '{print $3}')
tar -C "$(dirname "$PACKED")" -cf - "$(basename "$PACKED")" | xz -T0 -6 > data/table6_packed.tar.xz.tmp
mv data/table6_packed.tar.xz.tmp data/table6_packed.tar.xz
ls -l data/table6_packed.tar.xz
PINNED=$(awk '{print $2}' experiments/gpu/corpus/table6.sha256)  # table6_<fingerprint>.tar.xz
if [ "table6_$(basename "$PACKED").tar.xz" = "$PINNED" ]; then
  echo "pack_table6.sh: the same corpus as the committed experiments/gpu/corpus/$PINNED"
else
  echo "pack_table6.sh: fingerprint $(basename "$PACKED"), not the committed build's $PINNED: rows trained on it" \
    "are not paired with the committed rows (experiments/gpu/corpus/README.md)" >&2
fi
