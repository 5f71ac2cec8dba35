#!/usr/bin/env bash
# Runs a peer's baseline script ($BASELINES/redis-reserve.sh or pg-reserve.sh)
# as it is, optionally pinned like atp: server on $SERVER_CPU, benchmark tool
# on $CLIENT_CPU.
#
#   PIN=1 loadtest/bench/peer.sh redis     # REQS_P1 / REQS_P16 / PORT pass through
#   PIN=1 loadtest/bench/peer.sh pg        # DURATION / CLIENTS / MODES / SYNC / PORT pass through
#
# How pinning works (the scripts start server and tool themselves): the whole
# script runs under `taskset -c $CLIENT_CPU`, so redis-benchmark / pgbench
# (and everything else it starts) is on the client core; a watcher re-pins the
# server to $SERVER_CPU every 50 ms for as long as the script runs:
#   redis: every thread of the redis-server listening on $PORT (taskset -a -p);
#   pg:    the postmaster of the cluster on $PORT and every child of it
#          (backends fork from the postmaster, so once it is pinned they are
#          born pinned; the watcher still re-pins each one it sees).
# Each time a benchmark tool process appears the watcher prints the affinity
# of every thread of the server processes and of the tool ("affinity: ..."),
# sampled 1 s after the tool started.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

peer=${1:?usage: peer.sh redis|pg}
PIN=${PIN:-0}
case $peer in
  redis) script=$BASELINES/redis-reserve.sh; export PORT=${PORT:-6390}; tool=redis-benchmark ;;
  pg)    script=$BASELINES/pg-reserve.sh;    export PORT=${PORT:-5440}; tool=pgbench ;;
  *) echo "usage: peer.sh redis|pg" >&2; exit 2 ;;
esac
[ -x "$script" ] || [ -f "$script" ] || { echo "no $script" >&2; exit 2; }

server_pids() {
  if [ "$peer" = redis ]; then
    pgrep -f "^redis-server 127.0.0.1:$PORT" || true
  else
    local pm
    for pm in $(pgrep -f "bin/postgres -D .* -p $PORT " || true); do
      echo "$pm"; pgrep -P "$pm" || true
    done
  fi
}

pre=()
[ "$PIN" = 1 ] && pre=(taskset -c "$CLIENT_CPU")
"${pre[@]}" bash "$script" &
SCRIPT_PID=$!

# Is $1 a descendant of $2?
descends() {
  local p=$1
  while [ -n "$p" ] && [ "$p" -gt 1 ]; do
    [ "$p" = "$2" ] && return 0
    p=$(ps -o ppid= -p "$p" 2>/dev/null | tr -d ' ')
  done
  return 1
}

# "affinity: <what>: <processes> processes, <threads> threads on cpus <list>"
# for each distinct CPU list over all threads of the given processes.
affinity_of() {
  local what=$1 p; shift
  for p in "$@"; do
    taskset -a -c -p "$p" 2>/dev/null | sed -n "s/.*current affinity list: //p" | sort | uniq -c |
      while read -r n cpus; do echo "$p $n $cpus"; done
  done | awk -v w="$what" '{ if (!(($3, $1) in seen)) { seen[$3, $1] = 1; procs[$3]++ } threads[$3] += $2 }
    END { for (c in threads)
          printf "affinity: %s: %d processes, %d threads on cpus %s\n", w, procs[c], threads[c], c }'
}

watch() {
  local seen="" t p
  while kill -0 "$SCRIPT_PID" 2>/dev/null; do
    if [ "$PIN" = 1 ]; then
      for p in $(server_pids); do taskset -a -p -c "$SERVER_CPU" "$p" >/dev/null 2>&1 || true; done
    fi
    for t in $(pgrep -x "$tool" || true); do
      case " $seen " in *" $t "*) continue ;; esac
      descends "$t" "$SCRIPT_PID" || continue
      seen="$seen $t"
      (
        sleep 1
        # shellcheck disable=SC2046
        affinity_of "$peer server" $(server_pids)
        affinity_of "$tool" "$t"
      ) &
    done
    sleep 0.05
  done
}
watch &
WATCH_PID=$!
rc=0
wait "$SCRIPT_PID" || rc=$?
wait "$WATCH_PID" 2>/dev/null || true
echo "$peer script exit=$rc"
exit "$rc"
