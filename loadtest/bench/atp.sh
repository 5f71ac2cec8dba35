#!/usr/bin/env bash
# One atp run: a fresh atpd (fresh data dir under $BENCH_DATA) and one
# atp-loadgen run against it, then atpd is stopped (by PID) and its data dir
# deleted.
#
#   PIN=1 loadtest/bench/atp.sh --scenario reserve --clients 50 --skus 10000 --locations 1 --duration 20s --warmup 3s
#
# PIN=1: atpd runs under `taskset -c $SERVER_CPU` (every thread inherits it),
# atp-loadgen under `taskset -c $CLIENT_CPU`. PIN=0 (default): no pinning.
# Arguments go to atp-loadgen as they are (plus --endpoint).
# PERF=FILE: also `perf record -F 999 -g` atpd for PERF_SECONDS (15) starting
# PERF_DELAY (5) seconds after atp-loadgen starts, into FILE;
# PERF_CALLGRAPH=dwarf for call chains through code without frame pointers.
# PERF_STAT=FILE: count atpd's syscalls (perf stat, into FILE) and time its
# fdatasyncs (perf trace -s, into FILE.trace) over 10 s of the run.
# The affinity of every thread of both processes is printed (sampled
# AFFINITY_DELAY seconds after the load generator starts) as "affinity: ...",
# then the CPU both used over the next CPU_SECONDS (10) as "cpu: ...".
set -euo pipefail
. "$(dirname "$0")/lib.sh"

PIN=${PIN:-0}
AFFINITY_DELAY=${AFFINITY_DELAY:-6}
trap stop_atpd EXIT

start_atpd "$PIN"
log "atpd pid $ATPD_PID pin=$PIN dir=$ATPD_DIR"

pre=()
[ "$PIN" = 1 ] && pre=(taskset -c "$CLIENT_CPU")
"${pre[@]}" "$BIN/atp-loadgen" --endpoint "$ATP_ENDPOINT" "$@" &
LG_PID=$!

# CPU time (user+sys, all threads) of a process, in clock ticks.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
(
  sleep "$AFFINITY_DELAY"
  for p in "$ATPD_PID" "$LG_PID"; do affinity_summary "$p" | sed 's/^/affinity: /'; done
  # CPU used over CPU_SECONDS (10) of the measured part, in % of one core.
  a=$(ticks "$ATPD_PID"); b=$(ticks "$LG_PID"); sleep "${CPU_SECONDS:-10}"
  c=$(ticks "$ATPD_PID"); d=$(ticks "$LG_PID"); hz=$(getconf CLK_TCK)
  kill -0 "$LG_PID" 2>/dev/null || { echo "cpu: not measured (the run ended within the window)"; exit 0; }
  echo "cpu: atpd $(( 100 * (c - a) / hz / ${CPU_SECONDS:-10} ))% of one core, atp-loadgen $(( 100 * (d - b) / hz / ${CPU_SECONDS:-10} ))%, over ${CPU_SECONDS:-10} s"
) &
AFF_PID=$!

PERF_PID=""
if [ -n "${PERF:-}" ]; then
  sleep "${PERF_DELAY:-5}"
  # perf itself runs on the client core when pinned, so it does not take the server's.
  "${pre[@]}" perf record -F 999 --call-graph "${PERF_CALLGRAPH:-fp}" -p "$ATPD_PID" -o "$PERF" -- sleep "${PERF_SECONDS:-15}" >&2 2>"$PERF.record.log" &
  PERF_PID=$!
fi

STAT_PID=""
if [ -n "${PERF_STAT:-}" ]; then
  # Syscall counts and fdatasync durations of atpd over 10 s of the measured part.
  (
    sleep "${PERF_DELAY:-6}"
    "${pre[@]}" perf trace -s -e fdatasync,fsync -p "$ATPD_PID" -o "$PERF_STAT.trace" -- sleep 10 >/dev/null 2>&1 &
    "${pre[@]}" perf stat -x, -o "$PERF_STAT" -p "$ATPD_PID" \
      -e 'syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync,syscalls:sys_enter_write,syscalls:sys_enter_pwrite64,syscalls:sys_enter_writev,syscalls:sys_enter_sendmsg,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,context-switches' \
      -- sleep 10 >/dev/null 2>&1
    wait
  ) &
  STAT_PID=$!
fi

rc=0
wait "$LG_PID" || rc=$?
[ -n "$STAT_PID" ] && { wait "$STAT_PID" || true; }
wait "$AFF_PID" 2>/dev/null || true
[ -n "$PERF_PID" ] && { wait "$PERF_PID" || true; }
echo "atp-loadgen exit=$rc"
grep -E 'WARN|ERROR' "$ATPD_LOG" | head -20 | sed 's/^/atpd log: /' || true
exit "$rc"
