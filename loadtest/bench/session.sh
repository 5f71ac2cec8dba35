#!/usr/bin/env bash
# The side-by-side session: ROUNDS rounds, each running, in turn,
#   atp ceiling (closed loop, 50 clients, gRPC Health/Check: the most steps/s
#     atpd's gRPC stack and the load generator reach on this machine),
#   atp reserve (closed loop, 50 clients, 1 unit of one of 10,000 SKUs),
#   Redis+Lua (redis-reserve.sh: pipeline 1, then 16),
#   atp batch (ReserveBatch of 16),
#   PostgreSQL (pg-reserve.sh: txn/cte × 16/50 clients × synchronous_commit on/off),
# and, with OPEN_RATE set, atp open loop at OPEN_RATE Reserves/s (p50/p99/p99.9),
# so that noise from a shared machine hits every system alike.
#
#   loadtest/bench/session.sh pinned   3 OUTDIR
#   loadtest/bench/session.sh unpinned 3 OUTDIR
#
# Each run's output goes to OUTDIR/<pinned|unpinned>/<round>-<system>.log,
# preceded by the load average and the busiest processes at its start.
# summarize.py OUTDIR prints the medians.
#
# Run lengths (about 20 s measured each): atp --duration 20s --warmup 3s;
# REQS_P1 (1,000,000) and REQS_P16 (3,000,000) for Redis; DURATION (20) for
# each pgbench run.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

mode=${1:?usage: session.sh pinned|unpinned ROUNDS OUTDIR}
rounds=${2:-3}
out=${3:?usage: session.sh pinned|unpinned ROUNDS OUTDIR}
case $mode in pinned) pin=1 ;; unpinned) pin=0 ;; *) echo "pinned or unpinned" >&2; exit 2 ;; esac
export REQS_P1=${REQS_P1:-1000000} REQS_P16=${REQS_P16:-3000000} DURATION=${DURATION:-20}
ATP_RUN=${ATP_RUN:---duration 20s --warmup 3s}
mkdir -p "$out/$mode"
here=$(dirname "$0")

run() {
  local name=$1; shift
  local f=$out/$mode/$r-$name.log
  log "$mode round $r: $name -> $f"
  { quiet; noise; echo "# command: PIN=$pin $*"; } >"$f"
  PIN=$pin "$@" >>"$f" 2>&1 || echo "# exit status $?" >>"$f"
}

for r in $(seq 1 "$rounds"); do
  # shellcheck disable=SC2086
  run atp-ceiling "$here/atp.sh" --scenario ceiling --clients 50 $ATP_RUN
  # shellcheck disable=SC2086
  run atp-reserve "$here/atp.sh" --scenario reserve --clients 50 --skus 10000 --locations 1 $ATP_RUN
  run redis "$here/peer.sh" redis
  # shellcheck disable=SC2086
  run atp-batch "$here/atp.sh" --scenario batch --batch-size 16 --clients 50 --skus 10000 --locations 1 $ATP_RUN
  # PG_ROUNDS (default every round): PostgreSQL only in the first PG_ROUNDS rounds.
  if [ "$r" -le "${PG_ROUNDS:-$rounds}" ]; then run pg "$here/peer.sh" pg; fi
  if [ -n "${OPEN_RATE:-}" ]; then
    run atp-open "$here/atp.sh" --scenario reserve --mode open --rate "$OPEN_RATE" --clients 1000 \
      --skus 10000 --locations 1 --duration 20s --warmup 3s
  fi
done
log "done: python3 $here/summarize.py $out"
