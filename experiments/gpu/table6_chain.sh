#!/usr/bin/env bash
# The driver of one lease, started by experiments/gpu/table6.sh in its own process session: the GPU tests
# (GPU_TESTS, beside the sweeps); with BEFORE_ROWS, the lr sweeps alone and then that command (a benchmark that
# needs the GPU to itself); then the driver (table6.py) with what is left of DRIVER_BUDGET_S. Every step is
# bounded, and a failing step does not stop the next. Args: table6.py's. Env from table6.sh: DRIVER, PACKED,
# BEFORE_ROWS_OUT, COMPILE_CACHE (every run's trainer.compile_cache).
t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - t0 )); }
common=(--parallel "${PARALLEL:-3}" --extra "data.packed_dir=${PACKED%/}" logger.wandb.enabled=false
        "trainer.compile_cache=${COMPILE_CACHE:?set by table6.sh}")
if [ -n "${GPU_TESTS:-}" ]; then  # beside the sweeps: correctness, not timing
  echo "[chain] $(elapsed) s: GPU tests: $GPU_TESTS"
  # MODA_TEST_FAILURES (tests/failure_log.py): each failure's error is written as it happens, not at the end.
  rm -f "$DRIVER/gpu_test_failures.txt"
  # shellcheck disable=SC2086  # GPU_TESTS is a list of pytest arguments
  (MODA_TEST_FAILURES="$DRIVER/gpu_test_failures.txt" timeout "${GPU_TESTS_TIMEOUT_S:-480}" \
    python3 -m pytest -q -p no:cacheprovider --tb=short --show-capture=no \
    --durations=5 $GPU_TESTS \
    > "$DRIVER/gpu_tests.part" 2>&1; mv "$DRIVER/gpu_tests.part" "$DRIVER/gpu_tests.txt"; \
    echo "[chain] GPU tests: $(tail -1 "$DRIVER/gpu_tests.txt")") &
  tests_pid=$!
fi
if [ -n "${BEFORE_ROWS:-}" ]; then
  sweep_s=${SWEEP_BUDGET_S:-600}
  echo "[chain] $(elapsed) s: the lr sweeps alone (at most ${sweep_s} s)"
  python3 experiments/gpu/table6.py "$@" "${common[@]}" --log-dir "$DRIVER/sweeps" --seeds "" --budget-s "$sweep_s"
  [ -n "${tests_pid:-}" ] && wait "$tests_pid"
  echo "[chain] $(elapsed) s: before the rows: $BEFORE_ROWS"
  mkdir -p "$BEFORE_ROWS_OUT"
  timeout "${BEFORE_ROWS_TIMEOUT_S:-900}" bash -c "$BEFORE_ROWS" > "$BEFORE_ROWS_OUT/log.txt" 2>&1
  echo "[chain] $(elapsed) s: the command before the rows ended, rc=$?"
fi
# The deadline file (epoch seconds; table6.sh writes it from DRIVER_BUDGET_S and a later call may move it with
# DEADLINE_IN_S, as the driver then re-reads it every poll) sets what is left.
# table6.sh is its one writer: the driver below reads it (--deadline-file) and never rewrites it.
until_deadline() { echo $(( $(cat "$DRIVER/deadline") - $(date +%s) )); }  # written by table6.sh before the chain
left=$(until_deadline)
until_args=()
[ -n "${START_UNTIL_S:-}" ] && until_args=(--start-until-s $(( START_UNTIL_S - $(elapsed) )))
if [ "$left" -gt 60 ]; then
  echo "[chain] $(elapsed) s: the driver, ${left} s left"
  python3 experiments/gpu/table6.py "$@" "${common[@]}" --log-dir "$DRIVER" --budget-s "$left" \
    --deadline-file "$DRIVER/deadline" "${until_args[@]}"
fi
[ -n "${tests_pid:-}" ] && wait "$tests_pid"  # beside the driver too when there is no BEFORE_ROWS
if [ -n "${AFTER_ROWS:-}" ]; then  # the GPU to itself once the rows have ended, until 15 s before the deadline
  left=$(( $(until_deadline) - 15 ))
  mkdir -p "${AFTER_ROWS_OUT:?set by table6.sh}"
  if [ "$left" -gt "${AFTER_ROWS_MIN_S:-60}" ]; then
    echo "[chain] $(elapsed) s: after the rows (at most ${left} s): $AFTER_ROWS"
    timeout "$left" bash -c "$AFTER_ROWS" > "$AFTER_ROWS_OUT/log.txt" 2>&1
    echo "[chain] $(elapsed) s: the command after the rows ended, rc=$?"
  else
    echo "[chain] $(elapsed) s: ${left} s left, not enough for the command after the rows" | tee "$AFTER_ROWS_OUT/log.txt"
  fi
fi
date -u +%FT%TZ > "$DRIVER/ended"
