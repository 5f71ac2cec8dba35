#!/usr/bin/env bash
# A/B of two atp builds in one session, beside Redis: ROUNDS rounds, each
# running, in turn, A's and B's atp reserve (closed loop, 50 clients), Redis
# (redis-reserve.sh, pipeline 1 and 16), then A's and B's ReserveBatch×16 —
# so that noise hits both builds alike. With PG=1, one PostgreSQL run at the
# end.
#
#   BIN_A=/path/old BIN_B=/path/new loadtest/bench/ab.sh pinned|unpinned ROUNDS OUTDIR
#
# Logs: OUTDIR/{A,B}/<mode>/<round>-<system>.log (Redis's log is in both), so
# `summarize.py OUTDIR/A` and `summarize.py OUTDIR/B` give each build's
# medians and its ratios to the peers.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

mode=${1:?usage: ab.sh pinned|unpinned ROUNDS OUTDIR}
rounds=${2:-3}
out=${3:?usage: ab.sh pinned|unpinned ROUNDS OUTDIR}
case $mode in pinned) pin=1 ;; unpinned) pin=0 ;; *) echo "pinned or unpinned" >&2; exit 2 ;; esac
: "${BIN_A:?BIN_A: directory of build A's atpd and atp-loadgen}"
: "${BIN_B:?BIN_B: directory of build B's atpd and atp-loadgen}"
export REQS_P1=${REQS_P1:-1000000} REQS_P16=${REQS_P16:-3000000} DURATION=${DURATION:-20}
ATP_RUN=${ATP_RUN:---duration 20s --warmup 3s}
mkdir -p "$out/A/$mode" "$out/B/$mode"
here=$(dirname "$0")

run() {
  local side=$1 name=$2; shift 2
  local f=$out/$side/$mode/$r-$name.log bin
  [ "$side" = A ] && bin=$BIN_A || bin=$BIN_B
  log "$mode round $r: $side $name -> $f"
  { quiet; noise; echo "# command: BIN=$bin PIN=$pin $*"; } >"$f"
  BIN=$bin PIN=$pin "$@" >>"$f" 2>&1 || echo "# exit status $?" >>"$f"
}

for r in $(seq 1 "$rounds"); do
  for side in A B; do
    # shellcheck disable=SC2086
    run "$side" atp-reserve "$here/atp.sh" --scenario reserve --clients 50 --skus 10000 --locations 1 $ATP_RUN
  done
  run A redis "$here/peer.sh" redis
  cp "$out/A/$mode/$r-redis.log" "$out/B/$mode/$r-redis.log"
  for side in A B; do
    # shellcheck disable=SC2086
    run "$side" atp-batch "$here/atp.sh" --scenario batch --batch-size 16 --clients 50 --skus 10000 --locations 1 $ATP_RUN
  done
done
if [ "${PG:-0}" = 1 ]; then
  r=1
  run A pg "$here/peer.sh" pg
  cp "$out/A/$mode/1-pg.log" "$out/B/$mode/1-pg.log"
fi
log "done: python3 $here/summarize.py $out/A; python3 $here/summarize.py $out/B"
