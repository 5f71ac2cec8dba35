#!/usr/bin/env python3
"""Groups a `perf record -g` profile of atpd into where-the-time-goes buckets.

    python3 loadtest/bench/perf-groups.py atpd.perf.data [RESERVES_PER_S CPU_PCT]

Each sample is put in one bucket by its leaf frame (the function on CPU, as
`perf report --no-children` counts), using the kernel call chain for kernel
samples (the syscall it is under). Prints the buckets with their share of
atpd's samples and the split by thread (tokio worker, committer, fjall
background workers). With RESERVES_PER_S and CPU_PCT (atpd's CPU in % of one
core during the profile), also the CPU microseconds per Reserve of each bucket.

Rust user-space stacks are not unwound (the release build has no frame
pointers), so callers of malloc/memcmp are not known from stacks; the thread
they ran on is shown instead (the committer thread only writes the store).
"""
import re
import subprocess
import sys
from collections import defaultdict

USER_RULES = [
    ("fjall memtable / skiplist / LSM", r"crossbeam_skiplist|crossbeam_epoch|lsm_tree|^fjall|byteview|value_log|sfa::|xxhash|lz4"),
    ("malloc / free (glibc)", r"^(_int_malloc|malloc|_int_free|cfree|free|realloc|_int_realloc|malloc_consolidate|unlink_chunk|tcache|__libc_malloc|__libc_free|_int_memalign|calloc|__libc_calloc|alloc_perturb|sysmalloc)|^__rustc::__r(dl|ust)_(alloc|dealloc|realloc)"),
    ("memcmp / memcpy / memmove (glibc)", r"^__(memcmp|memmove|memcpy|memset|strlen|memchr)"),
    ("tonic / h2 / hyper / tower / prost (gRPC)", r"tonic|^<?h2::|h2::|hyper|tower|prost|^<?http::|http_body|axum|bytes::|<bytes::|httparse|^slab::|indexmap"),
    ("tokio scheduling / channels", r"tokio|mio::|futures_util|futures_core|parking_lot|std::sync|std::thread|epoll_wait|__vdso_clock_gettime"),
    ("store record encoding (postcard/serde)", r"postcard|serde"),
    ("atp code", r"atp_"),
    ("std hashing / collections (called by atp code)", r"core::hash|hashbrown|dashmap|btree|std::hash|BTreeMap|HashMap|DefaultHasher|sip::"),
]
KERNEL_SYSCALL_RULES = [
    ("kernel: write + fsync of the store (on CPU)", r"fdatasync|fsync|sys_pwrite|sys_write\b|ext4|jbd2|blk_|virtio_blk|iowrite16"),
    ("kernel: TCP / sockets", r"tcp_|sock_|sendmsg|recvmsg|recvfrom|sendto|writev|readv|net_rx|ip_|skb"),
    ("kernel: scheduling / wakeups (epoll, futex, context switch)", r"epoll|futex|schedule|finish_task_switch|nanosleep|sched_yield|try_to_wake_up|poll"),
]


def classify_user(sym):
    for name, rx in USER_RULES:
        if re.search(rx, sym):
            return name
    return "other user space (Rust std, unresolved)"


def classify_kernel(frames):
    text = " ".join(frames)
    for name, rx in KERNEL_SYSCALL_RULES:
        if re.search(rx, text):
            return name
    if re.search(r"page_fault|do_anonymous_page|handle_mm_fault", text):
        return "kernel: page faults"
    return "kernel: other"


def thread_of(comm):
    if comm.startswith("tokio"):
        return "tokio worker"
    if "committer" in comm:
        return "committer"
    if comm.startswith("fjall"):
        return "fjall bg"
    return comm


def samples(path):
    out = subprocess.run(["perf", "script", "-i", path, "-F", "comm,tid,ip,sym,dso"],
                         capture_output=True, text=True, check=True).stdout
    comm, frames = None, []
    for line in out.splitlines():
        if not line.strip():
            if comm is not None:
                yield comm, frames
            comm, frames = None, []
            continue
        if not line.startswith((" ", "\t")):
            if comm is not None:
                yield comm, frames
            comm = line.split()[0]
            frames = []
            continue
        m = re.match(r"\s*[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$", line)
        if m:
            sym = re.sub(r"\+0x[0-9a-f]+$", "", m.group(1))
            frames.append((sym, m.group(2)))
    if comm is not None:
        yield comm, frames


def main():
    path = sys.argv[1]
    rps = float(sys.argv[2]) if len(sys.argv) > 2 else None
    cpu = float(sys.argv[3]) if len(sys.argv) > 3 else None
    buckets = defaultdict(lambda: defaultdict(int))
    threads = defaultdict(int)
    total = 0
    for comm, frames in samples(path):
        if not frames:
            continue
        sym, dso = frames[0]
        if "kernel" in dso:
            b = classify_kernel([s for s, d in frames if "kernel" in d])
        else:
            b = classify_user(sym)
        t = thread_of(comm)
        buckets[b][t] += 1
        threads[t] += 1
        total += 1
    tnames = sorted(threads, key=lambda t: -threads[t])
    us = (cpu / 100.0) / rps * 1e6 if rps and cpu else None
    head = "| bucket | % of atpd samples | " + " | ".join(f"{t}" for t in tnames) + (" | µs CPU per Reserve |" if us else " |")
    print(f"{total} samples; threads: " + ", ".join(f"{t} {100.0 * threads[t] / total:.1f}%" for t in tnames))
    if us:
        print(f"atpd CPU per Reserve: {us:.0f} µs ({cpu:.0f}% of one core at {rps:.0f} Reserve/s)")
    print()
    print(head)
    print("|---" * (len(tnames) + 2 + (1 if us else 0)) + "|")
    for b in sorted(buckets, key=lambda b: -sum(buckets[b].values())):
        n = sum(buckets[b].values())
        row = f"| {b} | {100.0 * n / total:.1f}% | " + " | ".join(f"{100.0 * buckets[b][t] / total:.1f}%" for t in tnames)
        if us:
            row += f" | {us * n / total:.0f} |"
        else:
            row += " |"
        print(row)


if __name__ == "__main__":
    main()
