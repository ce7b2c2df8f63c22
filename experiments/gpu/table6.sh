#!/usr/bin/env bash
# GPU call (issue 12): the Table 6 lr sweep and rows (experiments/gpu/table6.py) in a driver that outlives the call,
# then each run's small files as one tarball.
#   device run: [DRIVER_BUDGET_S=1600] [WAIT_S=520] bash experiments/gpu/table6.sh [table6.py args]
#   carry: .whl (hydra, omegaconf, antlr4 + lm-eval's wheels: bash experiments/gpu/fetch_wheels.sh), data/eval.tar.xz
#   (mkdir -p data && tar -cJf data/eval.tar.xz -C ../shared/data/eval .); the corpus is committed
#
# The first call of a lease starts the driver in its own process session (setsid): on the lent machine it runs on
# between calls, until the machine goes back, so a row trains without a restart (a relaunch from a checkpoint cost
# 190-380 s of each run: the steps since the checkpoint, the gap and the compile). Every call, the first too, then
# waits up to WAIT_S for the driver to end and brings back what the runs wrote so far (runs.tar.gz, the driver's
# log and status.json). Issue the next call at once: the machine goes back after ~30 s idle.
#   DRIVER_BUDGET_S: the driver stops every job this many seconds after it started (the lease's device time, less
#     the start and the last call's collection); give --start-until-s too, so no row starts that cannot finish.
#   DEADLINE_IN_S: on a later call, moves that stop to this many seconds from now. The first call cannot know
#     what the machine's start cost (75 s to ~390 s); its reply's budget_left_s says, so the second call can set
#     the stop at what the lease has left, less that call's ~15 s and the last collection's.
#   A later call finds the driver running and only waits and collects; once the driver has ended, a call on the
#     same machine starts no new one (RELAUNCH=1 does). A fresh machine starts a fresh driver: the committed runs
#     of earlier sessions are extracted from their archives, so finished runs are not repeated.
#   The driver is a chain (experiments/gpu/table6_chain.sh): GPU_TESTS="<pytest arguments>" first runs those GPU
#   tests (at most GPU_TESTS_TIMEOUT_S, default 480 s: alone on an H100 tests/gpu took over 250 s on 2026-12-07,
#   beside three sweep runs over 240 s); with BEFORE_ROWS="<command>", the lr sweeps then run alone, then that command (a
#   benchmark that needs the GPU to itself; it writes into $BEFORE_ROWS_OUT, which comes back as
#   call/before_rows/ in runs.tar.gz), then the rows, in what is left of DRIVER_BUDGET_S. The tests' output comes
#   back as call/gpu_tests.txt in runs.tar.gz (gpu_tests.part.txt while they run), and each failure's error, as
#   it happens, as call/gpu_test_failures.txt.
#   AFTER_ROWS="<command>" runs once the rows have ended, in what is left of DRIVER_BUDGET_S (it writes into
#   $AFTER_ROWS_OUT, which comes back as call/after_rows/).
#   START_UNTIL_S: as --start-until-s, but counted from the chain's start (use it with BEFORE_ROWS).
# Every run loads and saves its torch.compile artifacts in .compile_cache/ (trainer.compile_cache,
# docs/COMPILE_CACHE.md: one file per variant, torch, triton and GPU). Each call brings that folder back as
# compile_cache/ (its 6 newest files, each up to 15 MiB); carry .compile_cache on the next call and its runs
# compile from it.
source experiments/gpu/env.sh
# What comes back is at most 8 files: table6.log, runs.tar.gz (the runs and, under call/, this call's small files)
# and up to 6 compile-cache files.
CALL=/tmp/call && rm -rf "$CALL" && mkdir -p "$CALL"
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv | tee "$CALL/nvidia-smi.txt"
# The corpus: the committed, pinned build (experiments/gpu/corpus/README.md), named and checked by its manifest
# table6.sha256; PACKED_ARCHIVE=<file> trains on another build (its rows get that build's fingerprint in their names).
CORPUS=experiments/gpu/corpus
PINNED=$CORPUS/$(awk '{print $2}' "$CORPUS/table6.sha256")
PACKED_ARCHIVE=${PACKED_ARCHIVE:-$PINNED}
if [ ! -d data/packed ]; then
  if [ "$PACKED_ARCHIVE" = "$PINNED" ]; then
    (cd "$CORPUS" && sha256sum --check --quiet --strict table6.sha256) \
      || { echo "[table6.sh] $PINNED does not match its manifest $CORPUS/table6.sha256" >&2; exit 2; }
  fi
  mkdir -p data/packed && tar -xJf "$PACKED_ARCHIVE" -C data/packed
fi
[ -d data/eval ] || { [ -f data/eval.tar.xz ] && mkdir -p data/eval && tar -xJf data/eval.tar.xz -C data/eval; }
PACKED=$(ls -d data/packed/*/ | head -1)
# The rows evaluate after fit: say at once whether lm-eval imports here (datasets wants pyarrow >= 24 from the image).
python3 -c "import pyarrow, datasets, lm_eval.evaluator; print('eval imports: pyarrow', pyarrow.__version__, \
  'datasets', datasets.__version__)" 2>&1 | tail -3 | tee "$CALL/eval_imports.txt"
# The runs of earlier sessions (committed as experiments/results/runs_gpu/<sweep>.tar.xz: the lr sweep, finished
# rows) count as done: each archive, checked against its manifest's sha256, is extracted into runs_gpu/<sweep>/
# without overwriting what this machine already holds. A dated snapshot (<sweep>.<date>.tar.xz: the runs an earlier
# analysis read) is a subset of its sweep's archive and is skipped.
for archive in experiments/results/runs_gpu/*.tar.xz; do
  [ -f "$archive" ] || continue
  sweep=$(basename "$archive" .tar.xz)
  case "$sweep" in *.*) continue ;; esac
  (cd "$(dirname "$archive")" && grep "  $sweep.tar.xz\$" "$sweep.sha256" | sha256sum --check --quiet --strict -) \
    || { echo "[table6.sh] $archive does not match its manifest $sweep.sha256; not extracted" >&2; exit 2; }
  mkdir -p runs_gpu && tar -xJf "$archive" -C runs_gpu --skip-old-files
done
# The driver's own files live outside runs_gpu (extracted from the repo's archives) and $OUT (emptied per call).
DRIVER=${TABLE6_DRIVER_DIR:-/tmp/table6_driver}
COMPILE_CACHE=.compile_cache  # in the repo root, where the jobs run: carried in, brought back as $OUT/compile_cache
# A call brings the artifacts back gzipped (~7x smaller); carried in as <key>.bin.gz, they are unpacked here.
for gz in "$COMPILE_CACHE"/*.bin.gz; do
  [ -f "$gz" ] || continue
  if [ ! -f "${gz%.gz}" ]; then
    gunzip -c "$gz" > "${gz%.gz}.part" && mv "${gz%.gz}.part" "${gz%.gz}"
  fi
  rm -f "$gz"
done
mkdir -p "$DRIVER"
alive() { [ -f "$DRIVER/pid" ] && kill -0 "$(cat "$DRIVER/pid")" 2>/dev/null; }
if alive; then
  echo "[table6.sh] driver $(cat "$DRIVER/pid") running since $(cat "$DRIVER/started")"
  if [ -n "${DEADLINE_IN_S:-}" ]; then  # the lease's time is known now (the first call's reply): use all of it
    echo $(( $(date +%s) + DEADLINE_IN_S )) > "$DRIVER/deadline.tmp" && mv "$DRIVER/deadline.tmp" "$DRIVER/deadline"
    echo "[table6.sh] deadline moved to ${DEADLINE_IN_S} s from now"
  fi
elif [ -f "$DRIVER/ended" ] && [ -z "${RELAUNCH:-}" ]; then
  echo "[table6.sh] the driver ended at $(cat "$DRIVER/ended"); collecting only (RELAUNCH=1 starts another)"
else
  rm -rf "$DRIVER/ended" "$DRIVER/deadline" "$DRIVER/before_rows" "$DRIVER/after_rows" "$DRIVER/sweeps"
  date -u +%FT%TZ > "$DRIVER/started"
  echo $(( $(date +%s) + ${DRIVER_BUDGET_S:-1600} )) > "$DRIVER/deadline"  # its one writer (and DEADLINE_IN_S)
  export DRIVER BEFORE_ROWS_OUT="$DRIVER/before_rows" AFTER_ROWS_OUT="$DRIVER/after_rows" PACKED COMPILE_CACHE
  setsid bash experiments/gpu/table6_chain.sh "$@" > "$DRIVER/driver.log" 2>&1 < /dev/null &
  echo $! > "$DRIVER/pid"
  echo "[table6.sh] driver $! started: budget ${DRIVER_BUDGET_S:-1600} s, args: $*"
fi
# Wait for the driver to end, or WAIT_S, printing each start, finish and stop as it happens. The wait never
# outlasts the driver's deadline by more than its 30 s of stopping jobs, so the lease's last call ends with it.
wait_s=${WAIT_S:-520}
sleep 2  # a driver just started writes its deadline within seconds; until then the wait is WAIT_S
if [ -f "$DRIVER/deadline" ]; then
  left=$(( $(cat "$DRIVER/deadline") - $(date +%s) + 40 ))
  [ "$left" -lt "$wait_s" ] && wait_s=$(( left > 0 ? left : 0 ))
fi
t_end=$((SECONDS + wait_s))
seen=0
while alive && [ $SECONDS -lt $t_end ]; do
  sleep 2
  lines=$(grep -c '' "$DRIVER/driver.log" 2>/dev/null); lines=${lines:-0}  # grep -c prints 0 and fails on no lines
  [ "$lines" -gt "$seen" ] && sed -n "$((seen + 1)),${lines}p" "$DRIVER/driver.log" && seen=$lines
done
sed -n "$((seen + 1)),\$p" "$DRIVER/driver.log"
alive && echo "[table6.sh] driver still running after ${wait_s} s of this call"
# The tests' output once they have ended, else what they printed so far; the errors of failures so far either way.
if [ -f "$DRIVER/gpu_tests.txt" ]; then cp "$DRIVER/gpu_tests.txt" "$CALL/gpu_tests.txt"
elif [ -f "$DRIVER/gpu_tests.part" ]; then cp "$DRIVER/gpu_tests.part" "$CALL/gpu_tests.part.txt"; fi
[ -f "$DRIVER/gpu_test_failures.txt" ] && cp "$DRIVER/gpu_test_failures.txt" "$CALL/gpu_test_failures.txt"
[ -d "$DRIVER/before_rows" ] && cp -r "$DRIVER/before_rows" "$CALL/before_rows"
[ -d "$DRIVER/after_rows" ] && cp -r "$DRIVER/after_rows" "$CALL/after_rows"
cp "$DRIVER/driver.log" "$OUT/table6.log"
[ -f "$DRIVER/status.json" ] && cp "$DRIVER/status.json" "$CALL/status.json"
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv | tee -a "$CALL/nvidia-smi.txt"
mkdir -p runs_gpu
tar czf "$OUT/runs.tar.gz" --exclude='*.ckpt' --exclude='*.ckpt.tmp' --exclude='wandb' runs_gpu -C /tmp "$(basename "$CALL")"
# The runs' compile artifacts, gzipped, for the next call to carry; a file over 15 MiB does not fit what a call
# returns.
if [ -d "$COMPILE_CACHE" ]; then
  mkdir -p "$OUT/compile_cache"
  for f in $(ls -t "$COMPILE_CACHE"/*.bin 2>/dev/null | head -6); do  # the newest 6: the 8-file limit
    gz="$OUT/compile_cache/$(basename "$f").gz"
    gzip -c "$f" > "$gz"
    size=$(stat -c %s "$gz")
    if [ "$size" -gt $((15 * 1024 * 1024)) ]; then
      rm -f "$gz"
      echo "[table6.sh] compile cache: $(basename "$f") not brought back: $size bytes gzipped, over 15 MiB"
    fi
  done
  echo "[table6.sh] compile cache: $(ls "$OUT/compile_cache" | wc -l) file(s) brought back as compile_cache/*.bin.gz"
fi
# Inductor's compile cache (FX graphs and Triton kernels) stays on the machine: 287 MB after 18 runs, 40.7 MB
# gzipped, over the 16 MiB a returned file may hold and, beside the packed corpus, the 64 MiB a call may carry.
# Its size is reported once the driver has ended, for a later attempt to carry a smaller part of it.
if ! alive; then
  CACHE=${TORCHINDUCTOR_CACHE_DIR:-/tmp/torchinductor_$(whoami)}
  [ -d "$CACHE" ] && echo "[table6.sh] compile cache: $(du -sh "$CACHE" | cut -f1) on disk, not carried"
fi
true
