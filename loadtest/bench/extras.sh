#!/usr/bin/env bash
# The figures beside the side-by-side session (session.sh), each into OUTDIR:
#
#   loadtest/bench/extras.sh open-loop RATE OUTDIR   # 3 pinned open-loop Reserve runs at RATE/s
#   loadtest/bench/extras.sh flash-sale OUTDIR       # 3 pinned flash sales: 100 units, 2,000 buyers
#   loadtest/bench/extras.sh profile OUTDIR          # perf record of the pinned atpd under closed-loop Reserve
#   loadtest/bench/extras.sh node-bench OUTDIR       # in-process node_bench, 50 and 200 clients (no gRPC)
#   loadtest/bench/extras.sh recovery OUTDIR         # recovery_bench: 1,000,000 positions + 1,000,000 holds
#   loadtest/bench/extras.sh clients-sweep OUTDIR    # pinned closed-loop Reserve at 10/50/200/1000 clients
#   loadtest/bench/extras.sh rate-sweep OUTDIR       # pinned open-loop Reserve at 250/500/1000/2000 per s
#
# Every atpd gets a fresh data dir under $BENCH_DATA, deleted afterwards.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
here=$(dirname "$0")
what=${1:?usage: see the head of extras.sh}; shift

case $what in
  open-loop)
    rate=${1:?RATE}; out=${2:?OUTDIR}; mkdir -p "$out"
    for r in 1 2 3; do
      { quiet; PIN=1 "$here/atp.sh" --scenario reserve --mode open --rate "$rate" --clients 1000 \
        --skus 10000 --locations 1 --duration 20s --warmup 3s; } >"$out/$r-open-loop-$rate.log" 2>&1 || true
    done
    ;;
  flash-sale)
    out=${1:?OUTDIR}; mkdir -p "$out"
    for r in 1 2 3; do
      { quiet; PIN=1 "$here/atp.sh" --scenario flash-sale --flash-stock 100 --clients 2000 --connections 8 \
        --duration 5s --warmup 1s; } >"$out/$r-flash-sale.log" 2>&1 || true
    done
    ;;
  profile)
    out=${1:?OUTDIR}; mkdir -p "$out"
    out=$(cd "$out" && pwd)
    { quiet; PERF=$out/atpd.perf.data PERF_DELAY=6 PERF_SECONDS=15 PIN=1 "$here/atp.sh" --scenario reserve \
      --clients 50 --skus 10000 --locations 1 --duration 20s --warmup 3s; } >"$out/profile-run.log" 2>&1 || true
    # The top of `perf report --no-children --sort symbol -g none`, without its padding.
    perf report -i "$out/atpd.perf.data" --no-children --sort symbol -g none 2>/dev/null | head -40 |
      sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//' | cut -c1-130 >"$out/perf-report-head40.txt" || true
    perf report -i "$out/atpd.perf.data" --no-children --sort comm -g none 2>/dev/null | grep -E '^ +[0-9]' >"$out/perf-threads.txt" || true
    rps=$(sed -n 's/^steps\/s *\([0-9.]*\).*/\1/p' "$out/profile-run.log")
    cpu=$(sed -n 's/^cpu: atpd \([0-9]*\)%.*/\1/p' "$out/profile-run.log")
    # shellcheck disable=SC2086
    python3 "$here/perf-groups.py" "$out/atpd.perf.data" $rps $cpu >"$out/perf-groups.txt"
    ;;
  node-bench)
    out=${1:?OUTDIR}; mkdir -p "$out"
    for c in 50 200; do
      d=$(mktemp -d "$BENCH_DATA/node-bench.XXXXXX")
      { quiet; "$EXAMPLES/node_bench" "$c" 20 "$d"; } >"$out/node-bench-$c.log" 2>&1 || true
      rm -rf "$d"
    done
    ;;
  recovery)
    out=${1:?OUTDIR}; mkdir -p "$out"
    d=$BENCH_DATA/recovery-bench.$$
    rm -rf "$d"
    { quiet; echo "# first run: fills $d, then recovers it"; /usr/bin/time -v "$EXAMPLES/recovery_bench" "$d"; } >"$out/recovery-1.log" 2>&1 || true
    { quiet; echo "# second run: recovers the same store (warm page cache)"; /usr/bin/time -v "$EXAMPLES/recovery_bench" "$d"; } >"$out/recovery-2.log" 2>&1 || true
    du -sh "$d" >>"$out/recovery-1.log"
    rm -rf "$d"
    ;;
  clients-sweep)
    # Is the closed-loop figure bound by CPU or by latency (clients / latency)?
    # Each run also counts atpd's syscalls and times its fdatasyncs (PERF_STAT).
    out=${1:?OUTDIR}; mkdir -p "$out"
    for c in ${SWEEP_CLIENTS:-10 50 200 1000}; do
      { quiet; PERF_STAT=$out/clients-$c.stat PIN=1 "$here/atp.sh" --scenario reserve --clients "$c" --connections 4 --skus 10000 --locations 1 \
        --duration 20s --warmup 3s; } >"$out/clients-$c.log" 2>&1 || true
    done
    ;;
  rate-sweep)
    # Open-loop latency at lower rates (one run each).
    out=${1:?OUTDIR}; mkdir -p "$out"
    for rate in ${SWEEP_RATES:-250 500 1000 2000}; do
      { quiet; PERF_STAT=$out/open-loop-$rate.stat PIN=1 "$here/atp.sh" --scenario reserve --mode open --rate "$rate" --clients 1000 \
        --skus 10000 --locations 1 --duration 20s --warmup 3s; } >"$out/open-loop-$rate.log" 2>&1 || true
    done
    ;;
  *) echo "unknown: $what" >&2; exit 2 ;;
esac
