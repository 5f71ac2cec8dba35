#!/usr/bin/env python3
"""Logs, every 5 s, the CPU that processes other than the benchmarked ones use.

    python3 loadtest/bench/noise.py > noise.log &     # stop it by its PID

The machine is shared: a colleague's build during one system's run skews the
comparison. Processes named like the benchmarked ones (atpd, atp-loadgen,
redis-*, postgres, pgbench, perf, the examples, shells) are left out; every
other process using 5% of a core or more is listed ("others=" is their sum,
in % of one core).
"""
import os, time, sys
MINE = {"atpd","atp-loadgen","redis-server","redis-benchmark","postgres","pgbench","perf","node_bench","recovery_bench","python3","bash","sleep","top","taskset"}
HZ = os.sysconf("SC_CLK_TCK")
def snap():
    d = {}
    for p in os.listdir("/proc"):
        if not p.isdigit(): continue
        try:
            s = open(f"/proc/{p}/stat").read()
            comm = s[s.index("(")+1:s.rindex(")")]
            f = s[s.rindex(")")+2:].split()
            d[int(p)] = (comm, int(f[11]) + int(f[12]))
        except Exception: pass
    return d
prev = snap(); tp = time.time()
while True:
    time.sleep(5)
    cur = snap(); t = time.time()
    others = []
    for pid, (comm, ticks) in cur.items():
        if comm in MINE: continue
        if pid in prev and prev[pid][0] == comm:
            pct = 100.0 * (ticks - prev[pid][1]) / HZ / (t - tp)
            if pct >= 5: others.append((pct, comm, pid))
    others.sort(reverse=True)
    tot = sum(o[0] for o in others)
    print(time.strftime("%H:%M:%S"), f"others={tot:.0f}%", " ".join(f"{c}:{p:.0f}%" for p, c, _ in others[:4]), flush=True)
    prev, tp = cur, t
