#!/usr/bin/env python3
"""Audit-log overhead per call: mcpd without an audit log, with `batch` and with `strict`
(fdatasync before every response, group commit), at concurrency 1 (sequential calls) and 32
(32 calls in flight at once in one stdio session: stdio carries one client, so concurrency
comes from pipelining; every in-flight call shares the log and its syncs).

Prints, for each mode and concurrency, p50/p99 latency per call, calls/s, and the overhead
against the no-audit run of the same concurrency. Usage:

    cargo build --release && python3 bench/audit_bench.py --mcpd target/release/mcpd [--dir DIR]

--dir chooses where the log is written (its file system decides what fdatasync costs).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stdio_bench import StdioClient, pct  # noqa: E402


def config(data, log, mode):
    lines = [
        "[stdio]", 'client = "bench"',
        "[clients.bench]", f'read = ["{data}"]',
        "[clients.bench.limits]", "max_concurrent_calls = 64",
    ]
    if mode != "none":
        lines += ["[audit]", f'path = "{log}"', f'mode = "{mode}"', "batch_interval_ms = 1000"]
    return "\n".join(lines) + "\n"


def run(mcpd, cfg_path, path, calls, conc):
    c = StdioClient([mcpd, "serve", "--stdio", "--config", cfg_path, "--log", "warn"])
    c.initialize()
    args = {"name": "read_text_file", "arguments": {"path": path}}
    for _ in range(100):
        c.request("tools/call", args)
    lat = []
    sent = {}
    next_id = 1_000_000
    done = 0
    t0 = time.perf_counter()
    # keep `conc` requests in flight
    while done < calls:
        while len(sent) < conc and (done + len(sent)) < calls:
            sent[next_id] = time.perf_counter()
            c.send({"jsonrpc": "2.0", "id": next_id, "method": "tools/call", "params": args})
            next_id += 1
        m = c._line()
        rid = m.get("id")
        if rid in sent:
            assert "result" in m and not m["result"].get("isError"), m
            lat.append((time.perf_counter() - sent.pop(rid)) * 1e3)
            done += 1
    wall = time.perf_counter() - t0
    c.close()
    return statistics.median(lat), pct(lat, 99), calls / wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mcpd", required=True)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--dir", default=None, help="directory for the audit log (default: a temp dir)")
    a = ap.parse_args()
    work = os.path.realpath(tempfile.mkdtemp(prefix="mcpd-audit-bench-"))
    data = os.path.join(work, "data")
    os.mkdir(data)
    logdir = os.path.realpath(a.dir) if a.dir else os.path.join(work, "log")
    os.makedirs(logdir, exist_ok=True)
    path = os.path.join(data, "4k.txt")
    with open(path, "w") as f:
        f.write("x" * 4096)
    rows = []
    for conc in (1, 32):
        base = None
        for mode in ("none", "batch", "strict"):
            log = os.path.join(logdir, f"audit-{mode}-{conc}.jsonl")
            cfg = os.path.join(work, f"{mode}.toml")
            with open(cfg, "w") as f:
                f.write(config(data, log, mode))
            p50, p99, rate = run(a.mcpd, cfg, path, a.calls, conc)
            if mode == "none":
                base = (p50, rate)
            per_call_us = (1e6 / rate - 1e6 / base[1]) if mode != "none" else 0.0
            rows.append((conc, mode, p50, p99, rate, per_call_us))
    print(f"\naudit overhead: tools/call read_text_file (4 KiB), {a.calls} calls per run, log in {logdir}\n")
    print(f"{'concurrency':>11} {'mode':>7} {'p50 ms':>8} {'p99 ms':>8} {'calls/s':>9} {'overhead/call us':>17}")
    for conc, mode, p50, p99, rate, ov in rows:
        print(f"{conc:>11} {mode:>7} {p50:8.3f} {p99:8.3f} {rate:9.0f} {ov:17.1f}")


if __name__ == "__main__":
    sys.exit(main())
