# Shared helpers for the loadtest/bench scripts (sourced, not run).
#
# Knobs (environment):
#   BENCH_DATA  where fresh atpd data dirs go   (/work/bench-data; must not be tmpfs)
#   BIN         directory holding atpd, atp-loadgen and the atp-shard examples
#               (target/release of this repo; copy the binaries elsewhere and
#               point BIN there if others may rebuild target/ during a session)
#   EXAMPLES    the atp-shard examples (node_bench, recovery_bench): $BIN/examples
#   ATP_PORT    port atpd listens on (50651, away from the default 50051 so a
#               colleague's node on the default port is never hit)
#   BASELINES   the peers' scripts (../shared/baselines from the repo root)
#   SERVER_CPU / CLIENT_CPU   cores for pinned runs (0 / 1)

BENCH_SELF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_SELF_DIR/../.." && pwd)
BENCH_DATA=${BENCH_DATA:-/work/bench-data}
BIN=${BIN:-$REPO_ROOT/target/release}
EXAMPLES=${EXAMPLES:-$BIN/examples}
ATP_PORT=${ATP_PORT:-50651}
ATP_ENDPOINT=http://127.0.0.1:$ATP_PORT
BASELINES=${BASELINES:-$(cd "$REPO_ROOT/../shared/baselines" 2>/dev/null && pwd)}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}

log() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }

# One line per distinct CPU list over all threads of a process:
#   "<name> pid <pid>: <n> threads on cpus <list>"
affinity_summary() {
  local pid=$1 name
  name=$(ps -o comm= -p "$pid" 2>/dev/null) || return 0
  taskset -a -c -p "$pid" 2>/dev/null | sed -n "s/.*current affinity list: //p" | sort | uniq -c |
    while read -r n cpus; do echo "$name pid $pid: $n threads on cpus $cpus"; done
}

# start_atpd PIN(0|1): a fresh data dir, atpd on SERVER_CPU when PIN=1, waits
# for "recovered; serving". Sets ATPD_PID, ATPD_DIR, ATPD_LOG.
start_atpd() {
  local pin=$1
  mkdir -p "$BENCH_DATA"
  ATPD_DIR=$(mktemp -d "$BENCH_DATA/atp-data.XXXXXX")
  ATPD_LOG=$ATPD_DIR.log
  : >"$ATPD_LOG"
  local pre=()
  [ "$pin" = 1 ] && pre=(taskset -c "$SERVER_CPU")
  ATP_DATA_DIR=$ATPD_DIR ATP_LISTEN_ADDR=127.0.0.1:$ATP_PORT ATP_LOG=${ATP_LOG_FILTER:-info} \
    "${pre[@]}" "$BIN/atpd" >"$ATPD_LOG" 2>&1 &
  ATPD_PID=$!
  for _ in $(seq 600); do
    grep -q 'recovered; serving' "$ATPD_LOG" && return 0
    kill -0 "$ATPD_PID" 2>/dev/null || break
    sleep 0.1
  done
  log "atpd did not come up:"; cat "$ATPD_LOG" >&2
  stop_atpd
  return 1
}

# stop_atpd: SIGTERM our atpd (by PID), wait, delete its data dir.
stop_atpd() {
  [ -n "${ATPD_PID:-}" ] || return 0
  kill "$ATPD_PID" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$ATPD_PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$ATPD_PID" 2>/dev/null && { log "atpd $ATPD_PID ignored SIGTERM; SIGKILL"; kill -9 "$ATPD_PID" 2>/dev/null || true; }
  wait "$ATPD_PID" 2>/dev/null || true
  [ -n "${ATPD_DIR:-}" ] && rm -rf "$ATPD_DIR" "$ATPD_LOG"
  ATPD_PID=""
}

# A run log's header: the time, the load average and the busiest processes.
noise() {
  echo "# $(date -Is) $(uptime | sed 's/.*load average/load average/')"
  top -bn1 -o %CPU | sed -n '8,11p' | sed 's/^/# top: /'
}

# Busy share of both cores (percent) over 2 s, from /proc/stat.
busy_pct() {
  local a b
  a=($(head -1 /proc/stat)); sleep 2; b=($(head -1 /proc/stat))
  local idle=$(( (b[4] + b[5]) - (a[4] + a[5]) )) total=0 i
  for i in 1 2 3 4 5 6 7 8; do total=$(( total + b[i] - a[i] )); done
  echo $(( total > 0 ? 100 * (total - idle) / total : 0 ))
}

# Before each run, wait (at most QUIET_WAIT s, 120) until others use under
# QUIET_PCT (25) % of the machine, so a colleague's build is less likely to
# land on one system only. Says in the log how busy it was.
quiet() {
  local waited=0 b
  while :; do
    b=$(busy_pct)
    [ "$b" -lt "${QUIET_PCT:-25}" ] && break
    [ "$waited" -ge "${QUIET_WAIT:-120}" ] && break
    waited=$((waited + 2))
  done
  echo "# machine busy ${b}% (others) before the run, after waiting ${waited}s"
}
