#!/usr/bin/env python3
"""Medians of a session.sh output directory (and of extras.sh logs).

    python3 loadtest/bench/summarize.py OUTDIR

Reads OUTDIR/{pinned,unpinned}/<round>-<system>.log and prints, per pinning
mode, every figure of every run, its median, and the ratios atp / peer.
"""
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def parse_atp(text):
    """The atp-loadgen report: steps/s, reservations/s, step latency, check."""
    r = {}
    m = re.search(r"^steps/s\s+([\d.]+)", text, re.M)
    if m:
        r["steps/s"] = float(m.group(1))
    m = re.search(r"^reservations/s\s+([\d.]+)", text, re.M)
    if m:
        r["reservations/s"] = float(m.group(1))
    m = re.search(r"^step\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", text, re.M)
    if m:
        _, mean, p50, p90, p99, p999, mx = (int(x) for x in m.groups())
        r.update({"p50_ms": p50 / 1000, "p99_ms": p99 / 1000, "p99.9_ms": p999 / 1000, "max_ms": mx / 1000})
    r["check"] = "passed" if re.search(r"^check passed", text, re.M) else "FAILED/absent"
    m = re.search(r"^errors\s+(.*)$", text, re.M)
    r["errors"] = m.group(1).strip() if m else "?"
    return r


def parse_redis(text):
    out = {}
    for m in re.finditer(r"pipeline=(\d+) requests=\d+ ops/s=([\d.]+) p50=([\d.]+)ms p95=[\d.]+ms p99=([\d.]+)ms", text):
        out[f"p{m.group(1)}"] = {"ops/s": float(m.group(2)), "p50_ms": float(m.group(3)), "p99_ms": float(m.group(4))}
    return out


def parse_pg(text):
    out = {}
    for m in re.finditer(r"mode=(\w+) synchronous_commit=(\w+) clients=(\d+) duration=\S+ tps=([\d.]+) avg=[\d.]+ms p50=([\d.]+)ms p99=([\d.]+)ms", text):
        key = f"{m.group(1)} sync={m.group(2)} c={m.group(3)}"
        out[key] = {"ops/s": float(m.group(4)), "p50_ms": float(m.group(5)), "p99_ms": float(m.group(6))}
    return out


def affinity(text):
    return sorted(set(re.findall(r"^affinity: (.*)$", text, re.M)))


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt(x, unit=""):
    if isinstance(x, float) and x != x:
        return "—"
    if unit == "ops":
        return f"{x:,.0f}"
    return f"{x:.2f}"


def summarize(mode_dir):
    series = defaultdict(lambda: defaultdict(list))  # figure -> metric -> [values by round]
    notes = []
    pins = defaultdict(set)
    opens = defaultdict(list)
    cpus = defaultdict(list)
    for f in sorted(mode_dir.glob("*.log")):
        text = f.read_text(errors="replace")
        rnd, system = f.stem.split("-", 1)
        m = re.search(r"^cpu: atpd (\d+)%", text, re.M)
        if m:
            cpus[system].append(int(m.group(1)))
        for a in affinity(text):
            pins[system].add(re.sub(r" pid \d+", "", a))
        if "# exit status" in text:
            notes.append(f"{f.name}: {re.search(r'# exit status.*', text).group(0)}")
        if system.startswith("atp-"):
            r = parse_atp(text)
            if system == "atp-open":
                m = re.search(r"open loop at (\d+)/s", text)
                if "p99_ms" not in r:
                    notes.append(f"{f.name}: no latency line")
                    continue
                opens[m.group(1) if m else "?"].append(r)
                if r["check"] != "passed" or r["errors"] != "none":
                    notes.append(f"{f.name}: check {r['check']}, errors {r['errors']}")
                continue
            fig = {
                "atp-ceiling": "atp gRPC ceiling (Health/Check)",
                "atp-reserve": "atp unary Reserve",
                "atp-batch": "atp ReserveBatch×16 (reservations/s)",
            }[system]
            key = "reservations/s" if system == "atp-batch" else "steps/s"
            if key not in r:
                notes.append(f"{f.name}: no throughput line")
                continue
            series[fig]["ops/s"].append(r[key])
            series[fig]["p50_ms"].append(r["p50_ms"])
            series[fig]["p99_ms"].append(r["p99_ms"])
            if r["check"] != "passed" or r["errors"] != "none":
                notes.append(f"{f.name}: check {r['check']}, errors {r['errors']}")
        elif system == "redis":
            for p, v in parse_redis(text).items():
                fig = f"Redis+Lua pipeline {p[1:]}"
                for k, x in v.items():
                    series[fig][k].append(x)
        elif system == "pg":
            for k0, v in parse_pg(text).items():
                fig = f"PostgreSQL {k0}"
                for k, x in v.items():
                    series[fig][k].append(x)
    return series, notes, pins, opens, cpus


def main():
    root = Path(sys.argv[1])
    for mode in ("pinned", "unpinned"):
        d = root / mode
        if not d.is_dir():
            continue
        series, notes, pins, opens, cpus = summarize(d)
        print(f"\n### {mode}\n")
        print("| system | ops/s per run | **median ops/s** | p50 ms (median) | p99 ms (median) |")
        print("|---|---|---|---|---|")
        meds = {}
        for fig in sorted(series, key=lambda s: (not s.startswith("atp"), s)):
            v = series[fig]
            meds[fig] = med(v["ops/s"])
            runs = " / ".join(fmt(x, "ops") for x in v["ops/s"])
            print(f"| {fig} | {runs} | **{fmt(meds[fig], 'ops')}** | {fmt(med(v['p50_ms']))} | {fmt(med(v['p99_ms']))} |")
        unary = meds.get("atp unary Reserve", float("nan"))
        batch = meds.get("atp ReserveBatch×16 (reservations/s)", float("nan"))
        ceiling = meds.get("atp gRPC ceiling (Health/Check)")
        # Issue 8's targets (None: reported, no target).
        ratios = [
            ("unary Reserve / atp gRPC ceiling", unary, ceiling, 0.6),
            ("unary Reserve / PostgreSQL one-statement (cte), sync=on, 50 clients", unary, meds.get("PostgreSQL cte sync=on c=50"), 2.0),
            ("unary Reserve / Redis+Lua pipeline 1", unary, meds.get("Redis+Lua pipeline 1"), None),
            ("ReserveBatch×16 / Redis+Lua pipeline 16", batch, meds.get("Redis+Lua pipeline 16"), 1.0),
            ("Redis+Lua pipeline 1 / atp gRPC ceiling", meds.get("Redis+Lua pipeline 1"), ceiling, None),
        ]
        print("\n| ratio (medians) | value | target | met? |")
        print("|---|---|---|---|")
        for name, a, b, target in ratios:
            if not a or not b:
                continue
            x = a / b
            if target is None:
                print(f"| {name} | {x:.3f}× | — | — |")
            else:
                print(f"| {name} | {x:.3f}× | ≥ {target:.1f}× | {'yes' if x >= target else 'no'} |")
        for rate, runs in opens.items():
            print(f"\nopen loop at {rate}/s (latency from the intended send time), per run and median:\n")
            print("| run | p50 ms | p99 ms | p99.9 ms | max ms |")
            print("|---|---|---|---|---|")
            for i, r in enumerate(runs, 1):
                print(f"| {i} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['p99.9_ms']:.2f} | {r['max_ms']:.2f} |")
            print(f"| **median** | **{med([r['p50_ms'] for r in runs]):.2f}** | **{med([r['p99_ms'] for r in runs]):.2f}** | "
                  f"**{med([r['p99.9_ms'] for r in runs]):.2f}** | {med([r['max_ms'] for r in runs]):.2f} |")
            p99 = med([r['p99_ms'] for r in runs])
            print(f"\nopen-loop p99 target < 2 ms: {'met' if p99 < 2 else 'not met'} ({p99:.2f} ms)")
        if cpus:
            print("\natpd CPU (% of one core, 10 s of each run): " + "; ".join(f"{s}: {', '.join(map(str, v))}" for s, v in sorted(cpus.items())))
        if pins:
            print("\naffinity seen:")
            for s in sorted(pins):
                for a in sorted(pins[s]):
                    print(f"- {s}: {a}")
        if notes:
            print("\nnotes:")
            for n in notes:
                print(f"- {n}")


if __name__ == "__main__":
    main()
