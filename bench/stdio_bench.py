#!/usr/bin/env python3
"""Benchmark: sequential `tools/call read_text_file` on a 4 KiB file over stdio, and cold start
to first result, for mcpd and for the reference @modelcontextprotocol/server-filesystem (Node).

Prints p50/p99 latency, calls/s and cold-start medians for each server, and the ratios, in one
run on the same machine and the same file. No thresholds are asserted here: the numbers are the
result. Usage:

    bench/run.sh                      # builds release mcpd, installs the reference, runs this
    python3 bench/stdio_bench.py --mcpd target/release/mcpd --reference bench/node_modules/...
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


class StdioClient:
    def __init__(self, argv, cwd=None):
        self.t0 = time.perf_counter()
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, cwd=cwd, bufsize=0)
        self.next_id = 1
        self.buf = b""

    def send(self, msg):
        self.p.stdin.write((json.dumps(msg) + "\n").encode())
        self.p.stdin.flush()

    def _line(self):
        while b"\n" not in self.buf:
            chunk = os.read(self.p.stdout.fileno(), 1 << 16)
            if not chunk:
                raise RuntimeError("server closed stdout")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def request(self, method, params):
        rid = self.next_id
        self.next_id += 1
        self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        while True:
            m = self._line()
            if m.get("id") == rid:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]

    def initialize(self):
        self.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                    "clientInfo": {"name": "bench", "version": "1"}})
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def close(self):
        try:
            self.p.stdin.close()
            self.p.wait(timeout=10)
        except Exception:
            self.p.kill()
            self.p.wait()


def pct(xs, q):
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, int(round(q / 100.0 * (len(xs) - 1)))))
    return xs[k]


def bench_server(name, argv, path, calls, warmup, cold_runs):
    # Steady state: one session, sequential calls.
    c = StdioClient(argv)
    c.initialize()
    args = {"name": "read_text_file", "arguments": {"path": path}}
    first = c.request("tools/call", args)
    text = first["content"][0]["text"]
    assert len(text) == 4096 and not first.get("isError"), f"{name}: unexpected result {first}"
    for _ in range(warmup):
        c.request("tools/call", args)
    lat = []
    t_start = time.perf_counter()
    for _ in range(calls):
        t = time.perf_counter()
        c.request("tools/call", args)
        lat.append((time.perf_counter() - t) * 1e3)
    wall = time.perf_counter() - t_start
    c.close()
    # Cold start: process start → initialize → first tools/call result.
    cold = []
    for _ in range(cold_runs):
        t = time.perf_counter()
        c = StdioClient(argv)
        c.initialize()
        r = c.request("tools/call", args)
        cold.append((time.perf_counter() - t) * 1e3)
        assert not r.get("isError")
        c.close()
    return {
        "server": name,
        "p50_ms": statistics.median(lat),
        "p99_ms": pct(lat, 99),
        "calls_per_s": calls / wall,
        "cold_start_ms_median": statistics.median(cold),
        "cold_start_ms_min": min(cold),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mcpd", required=True)
    ap.add_argument("--reference", help="path of server-filesystem's dist/index.js")
    ap.add_argument("--node", default=shutil.which("node") or "node")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--cold-runs", type=int, default=20)
    ap.add_argument("--json", help="write results here too")
    a = ap.parse_args()

    d = os.path.realpath(tempfile.mkdtemp(prefix="mcpd-bench-"))
    path = os.path.join(d, "4k.txt")
    with open(path, "w") as f:
        f.write(("0123456789abcdef" * 256)[:4096])

    results = [bench_server("mcpd", [a.mcpd, "serve", "--stdio", "--allow-read", d, "--log", "warn"],
                            path, a.calls, a.warmup, a.cold_runs)]
    if a.reference:
        results.append(bench_server("reference (server-filesystem, node)", [a.node, a.reference, d],
                                    path, a.calls, a.warmup, a.cold_runs))
    shutil.rmtree(d, ignore_errors=True)

    print(f"\nsequential tools/call read_text_file (4 KiB) over stdio, {a.calls} calls after {a.warmup} warm-up;"
          f" cold start = spawn -> initialize -> first result, median of {a.cold_runs}\n")
    print(f"{'server':40} {'p50 ms':>9} {'p99 ms':>9} {'calls/s':>10} {'cold ms':>9} {'cold min':>9}")
    for r in results:
        print(f"{r['server']:40} {r['p50_ms']:9.3f} {r['p99_ms']:9.3f} {r['calls_per_s']:10.0f}"
              f" {r['cold_start_ms_median']:9.2f} {r['cold_start_ms_min']:9.2f}")
    if len(results) == 2:
        m, ref = results
        print(f"\nratios mcpd/reference: p50 {m['p50_ms'] / ref['p50_ms']:.3f} (target <= 0.200),"
              f" p99 {m['p99_ms'] / ref['p99_ms']:.3f}, throughput x{m['calls_per_s'] / ref['calls_per_s']:.1f},"
              f" cold start {m['cold_start_ms_median'] / ref['cold_start_ms_median']:.3f}")
    print(f"mcpd cold start median {results[0]['cold_start_ms_median']:.2f} ms (target <= 10 ms)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
