#!/usr/bin/env bash
# Disk use of atpd under sustained load: a fresh atpd, atp-loadgen `reserve`
# (closed loop, 50 clients, holds of HOLD_TTL_S = 60 s that then expire) for
# DURATION seconds (600), and every SAMPLE seconds (10) the bytes of the log
# segments, the checkpoints and the ledger index, as CSV on stdout:
#
#   seconds,log_bytes,log_segments,checkpoint_bytes,ledger_index_bytes,rss_kib
#
#   loadtest/bench/disk-use.sh [DURATION] [SAMPLE] > disk-use.csv
#
# Holds expire after HOLD_TTL_S and ended reservations are kept
# ATP_RETENTION_S (120 here), so the state reaches a steady size after about
# three minutes (with the 24 h default it grows for a day, and so do its
# checkpoints; committed orders that never ship grow it for ever). The ledger index keeps 30 days by
# design and grows with the load; it is reported apart. The run is not
# checked (forgotten reservations would count as missing).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

DURATION=${1:-600}
SAMPLE=${2:-10}
export ATP_RETENTION_S=${ATP_RETENTION_S:-120}
trap 'kill ${LG_PID:-} 2>/dev/null || true; stop_atpd' EXIT

start_atpd "${PIN:-0}"
log "atpd pid $ATPD_PID dir=$ATPD_DIR retention_s=$ATP_RETENTION_S"
"$BIN/atp-loadgen" --endpoint "$ATP_ENDPOINT" --scenario reserve --hold-ttl-s "${HOLD_TTL_S:-60}" --clients 50 \
  --skus 10000 --locations 1 --duration "${DURATION}s" --warmup 0s --check false \
  >"$ATPD_DIR.loadgen.json" 2>"$ATPD_DIR.loadgen.log" &
LG_PID=$!

bytes() { { du -sb "$1" 2>/dev/null || true; } | cut -f1 | head -1; }
echo "seconds,log_bytes,log_segments,checkpoint_bytes,ledger_index_bytes,rss_kib"
start=$(date +%s)
while kill -0 "$LG_PID" 2>/dev/null; do
  now=$(( $(date +%s) - start ))
  segments=$({ find "$ATPD_DIR/log" -name '*.log' 2>/dev/null || true; } | wc -l)
  rss=$(awk '/VmRSS/ { print $2 }' "/proc/$ATPD_PID/status" 2>/dev/null || true)
  echo "$now,$(bytes "$ATPD_DIR/log"),$segments,$(bytes "$ATPD_DIR/checkpoints"),$(bytes "$ATPD_DIR/ledger-index"),$rss"
  sleep "$SAMPLE"
done
wait "$LG_PID" || log "atp-loadgen exited with $?"
# What the checkpointer did (rounds, longest shard pause, sizes), to stderr.
grep 'checkpoint round' "$ATPD_LOG" | sed 's/\x1b\[[0-9;]*m//g' >&2 || true
log "loadgen summary: $(head -c 600 "$ATPD_DIR.loadgen.json")"
rm -f "$ATPD_DIR.loadgen.json" "$ATPD_DIR.loadgen.log"
