#!/usr/bin/env python3
"""fdatasync latency of the disk under DIR: 1,000 appends of 4 KiB, each followed
by fdatasync (what a write-ahead log does), then 1,000 overwrites of a
preallocated file, each followed by fdatasync.

    python3 loadtest/bench/fsync-latency.py /work/bench-data
"""
import os
import statistics
import sys
import time


def run(path, preallocate):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    if preallocate:
        os.write(fd, b"\0" * (4096 * 1000))
        os.fsync(fd)
    lat = []
    for i in range(1000):
        if preallocate:
            os.pwrite(fd, b"y" * 4096, i * 4096)
        else:
            os.write(fd, b"x" * 4096)
        t = time.perf_counter()
        os.fdatasync(fd)
        lat.append((time.perf_counter() - t) * 1000)
    os.close(fd)
    os.unlink(path)
    lat.sort()
    what = "overwrite 4 KiB of a preallocated file" if preallocate else "append 4 KiB"
    print(f"{what} + fdatasync, 1000 times: p50={lat[500]:.3f}ms p90={lat[900]:.3f}ms "
          f"p99={lat[990]:.3f}ms max={lat[-1]:.3f}ms mean={statistics.mean(lat):.3f}ms")


if __name__ == "__main__":
    d = sys.argv[1] if len(sys.argv) > 1 else "."
    run(os.path.join(d, "fsync-latency.test"), False)
    run(os.path.join(d, "fsync-latency.test"), True)
