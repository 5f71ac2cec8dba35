#!/usr/bin/env bash
# One cluster run: a fresh etcd (free ports, temp dir), NODES fresh atpd in
# cluster mode (ports ATP_PORT, ATP_PORT+1, ...), one atp-loadgen run sent
# to every node, then everything is stopped and deleted.
#
#   NODES=3 ROUTE=true loadtest/bench/cluster.sh --scenario checkout --clients 50 --duration 20s --warmup 3s
#
# ROUTE=true: the SDK routes each call to its shard's owner (default);
# ROUTE=false: round-robin over the nodes, which forward what they do not
# own. Arguments go to atp-loadgen as they are (plus --endpoint, --route,
# --json). Prints the loadgen's report, then one line:
#   cluster: nodes N route R ops/s X atpd_cpu C cores etcd_cpu E cores calls_per_cpu_s Y forwarded F ...
# where the CPU (user+sys, all threads, summed over the atpd processes) is
# measured over CPU_SECONDS (10) of the measured part, starting
# CPU_DELAY (warm-up + 2 s, default 5) seconds after the loadgen's setup
# ended, and ops/s is the loadgen's measured calls per second.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

NODES=${NODES:-3}
ROUTE=${ROUTE:-true}
CPU_SECONDS=${CPU_SECONDS:-10}
CPU_DELAY=${CPU_DELAY:-5}
mkdir -p "$BENCH_DATA"
RUN_DIR=$(mktemp -d "$BENCH_DATA/cluster.XXXXXX")
PIDS=()
ETCD_PID=""
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -n "$ETCD_PID" ] && { kill "$ETCD_PID" 2>/dev/null || true; wait "$ETCD_PID" 2>/dev/null || true; }
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CLIENT_PORT=$(free_port); PEER_PORT=$(free_port)
etcd --data-dir "$RUN_DIR/etcd" --name bench \
  --listen-client-urls "http://127.0.0.1:$CLIENT_PORT" --advertise-client-urls "http://127.0.0.1:$CLIENT_PORT" \
  --listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
  --initial-cluster "bench=http://127.0.0.1:$PEER_PORT" >"$RUN_DIR/etcd.log" 2>&1 &
ETCD_PID=$!
ETCD=http://127.0.0.1:$CLIENT_PORT
for _ in $(seq 100); do
  curl -sf "$ETCD/health" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf "$ETCD/health" >/dev/null || { log "etcd did not come up"; cat "$RUN_DIR/etcd.log" >&2; exit 1; }

ENDPOINTS=()
for i in $(seq 0 $((NODES - 1))); do
  port=$((ATP_PORT + i))
  mkdir -p "$RUN_DIR/node$i"
  ATP_DATA_DIR=$RUN_DIR/node$i ATP_LISTEN_ADDR=127.0.0.1:$port ATP_LOG=${ATP_LOG_FILTER:-info} \
    ATP_ETCD_ENDPOINTS=$ETCD ATP_CLUSTER_NAME=bench ATP_INITIAL_MEMBERS=$NODES \
    "$BIN/atpd" >"$RUN_DIR/node$i.log" 2>&1 &
  PIDS+=($!)
  ENDPOINTS+=("http://127.0.0.1:$port")
done
ENDPOINT_LIST=$(IFS=,; echo "${ENDPOINTS[*]}")

# Every shard claimed, as node 0 sees it.
claimed() {
  "$BIN/atpctl" --addr "${ENDPOINTS[0]}" --json cluster shards 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(1 for s in d["shards"] if s["epoch"]>0))' 2>/dev/null || echo 0
}
for _ in $(seq 600); do
  [ "$(claimed)" = 1024 ] && break
  sleep 0.1
done
[ "$(claimed)" = 1024 ] || { log "not every shard was claimed"; tail -20 "$RUN_DIR/node0.log" >&2; exit 1; }
log "etcd $ETCD_PID, $NODES atpd (${PIDS[*]}) serving 1024 shards; route=$ROUTE"

forwarded() {
  local total=0 n
  for endpoint in "${ENDPOINTS[@]}"; do
    n=$("$BIN/atpctl" --addr "$endpoint" --json cluster members |
      python3 -c 'import json,sys; print(json.load(sys.stdin).get("forwarded_requests",0))')
    total=$((total + n))
  done
  echo "$total"
}
ticks() { local t=0 pid; for pid in "$@"; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0))); done; echo "$t"; }

REPORT=$RUN_DIR/report.json
"$BIN/atp-loadgen" --endpoint "$ENDPOINT_LIST" --route "$ROUTE" --json "$REPORT" "$@" >"$RUN_DIR/loadgen.out" 2>&1 &
LG_PID=$!
# The measured part starts after the setup (the loadgen logs "setup done" or
# similar); waiting for its warm-up line keeps setup CPU out.
for _ in $(seq 1200); do
  grep -qiE 'warm|measur' "$RUN_DIR/loadgen.out" && break
  kill -0 "$LG_PID" 2>/dev/null || break
  sleep 0.1
done
FWD_BEFORE=$(forwarded)
sleep "$CPU_DELAY"
hz=$(getconf CLK_TCK)
a=$(ticks "${PIDS[@]}"); e=$(ticks "$ETCD_PID")
sleep "$CPU_SECONDS"
b=$(ticks "${PIDS[@]}"); f=$(ticks "$ETCD_PID")
FWD_AFTER=$(forwarded)
# MOVES=N: N planned single-shard moves, one after another, while the load
# runs (a random shard each, to a random other node, asked of node 0);
# DRAIN=true: then the last node is drained (DrainNode, 4 at a time).
# Prints `moves: ...` and `drain: ...` lines (times from the move's fence
# to the new owner's claim, as MoveShard reports them; the drain's wall time).
if [ "${MOVES:-0}" -gt 0 ] || [ "${DRAIN:-false}" = true ]; then
  python3 - "$BIN/atpctl" "${ENDPOINTS[0]}" "${MOVES:-0}" "${DRAIN:-false}" <<'EOF2'
import json, random, subprocess, sys, time
atpctl, endpoint, moves, drain = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "true"
def ctl(*args):
    out = subprocess.run([atpctl, "--addr", endpoint, "--json", "--timeout-seconds", "600", *args],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"atpctl {' '.join(args)} failed: {out.stderr.strip()}")
    return json.loads(out.stdout)
members = sorted(m["node_id"] for m in ctl("cluster", "members")["members"])
times = []
for _ in range(moves):
    shards = ctl("cluster", "shards")["shards"]
    shard = random.randrange(1024)
    owner = next(s["owner"] for s in shards if s["shard"] == shard)
    to = random.choice([m for m in members if m != owner])
    times.append(ctl("shard", "move", str(shard), "--to", to)["elapsed_ms"])
if times:
    times.sort()
    print(f"moves: n {len(times)} p50_ms {times[len(times) // 2]} max_ms {times[-1]} all {times}")
if drain:
    started = time.monotonic()
    drained = ctl("node", "drain", members[-1])
    print(f"drain: node {members[-1]} moved {len(drained['moves'])} failed {len(drained['failures'])} "
          f"elapsed_ms {drained['elapsed_ms']} wall_s {time.monotonic() - started:.1f}")
EOF2
fi
wait "$LG_PID" || { log "atp-loadgen failed"; cat "$RUN_DIR/loadgen.out" >&2; exit 1; }
cat "$RUN_DIR/loadgen.out"
python3 - "$REPORT" "$NODES" "$ROUTE" "$a" "$b" "$e" "$f" "$hz" "$CPU_SECONDS" "$FWD_BEFORE" "$FWD_AFTER" <<'EOF'
import json, sys
report, nodes, route, a, b, e, f, hz, secs, fb, fa = sys.argv[1:]
r = json.load(open(report))["report"]
ops = r["calls_per_s"]
errors = sum(r["errors"].values())
atpd = (int(b) - int(a)) / int(hz) / float(secs)
etcd = (int(f) - int(e)) / int(hz) / float(secs)
print(f"cluster: nodes {nodes} route {route} ops/s {ops:.0f} atpd_cpu {atpd:.2f} cores "
      f"etcd_cpu {etcd:.2f} cores calls_per_cpu_s {ops / atpd:.0f} forwarded {int(fa) - int(fb)} "
      f"errors {errors} p50_us {r['latency']['p50_us']} p99_us {r['latency']['p99_us']}")
EOF
