#!/usr/bin/env bash
# Set up moda-lab from scratch: a virtualenv in .venv with pinned torch (CPU build here) and the project.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch before anything that depends on it: an unpinned torch would pull a multi-GB CUDA build.
# (The CPU pin; on a GPU machine torch comes from the cluster instead: README, "GPU install".)
.venv/bin/python -m pip install -q "torch==2.13.0" "triton==3.7.1"
# The project at the exact versions CI tests (constraints.txt; pyproject.toml only declares ranges).
# dev: the test tools.
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
# English prose for the embedded default corpus: the Python documentation sources from Debian.
# Optional: without it the corpus falls back to the reference topics shipped in the standard library.
if [ ! -d /usr/share/doc/python3.11/html/_sources ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq python3.11-doc >/dev/null) \
    || echo "setup.sh: could not install python3.11-doc; the default corpus will use pydoc topics as prose" >&2
fi
echo "setup.sh: ready (.venv/bin/python)"
