#!/usr/bin/env bash
# GPU call: run one command per machine in its own process session, so it outlives the call that started it and
# the GPU never waits between calls; every call waits up to WAIT_S for it to end and brings back what it wrote.
#   device run: WAIT_S=560 bash experiments/gpu/detached.sh '<command>'   (carry .whl for hydra's wheels)
# The command runs with JOB_OUT set to a folder it writes its results into (a benchmark writing a row at a time
# keeps what it measured when the lease ends). Each call brings back JOB_OUT as $OUT/out.tar.gz (a call returns
# at most 8 files) and the command's log as $OUT/detached.log. A call that finds the command running, or ended, only waits and collects: the command
# runs once per machine (a fresh machine runs it again). Issue the next call at once: the machine goes back after
# ~30 s idle. Give the last call of a lease a WAIT_S that ends inside the lease's device time.
source experiments/gpu/env.sh
JOB=${DETACHED_DIR:-/tmp/detached}
mkdir -p "$JOB/out"
alive() { [ -f "$JOB/pid" ] && kill -0 "$(cat "$JOB/pid")" 2>/dev/null; }
if alive; then
  echo "[detached] running since $(cat "$JOB/started")"
elif [ -f "$JOB/ended" ]; then
  echo "[detached] ended at $(cat "$JOB/ended"); collecting only"
else
  [ -n "${1:-}" ] || { echo "[detached] no command given" >&2; exit 2; }
  date -u +%FT%TZ > "$JOB/started"
  JOB_OUT="$JOB/out" JOB_ENDED="$JOB/ended" setsid bash -c "$1"'; date -u +%FT%TZ > "$JOB_ENDED"' \
    > "$JOB/log.txt" 2>&1 < /dev/null &
  echo $! > "$JOB/pid"
  echo "[detached] started $(cat "$JOB/pid"): $1"
fi
t_end=$((SECONDS + ${WAIT_S:-560}))
while alive && [ $SECONDS -lt $t_end ]; do sleep 2; done
alive && echo "[detached] still running after ${WAIT_S:-560} s of this call"
tail -n "${TAIL_LINES:-30}" "$JOB/log.txt"
tar czf "$OUT/out.tar.gz" -C "$JOB" out
cp "$JOB/log.txt" "$OUT/detached.log"
