#!/usr/bin/env python3
"""Streamable HTTP benchmark: mcpd (broker + one confined worker per session) against the
official Rust MCP SDK (rmcp, bench/rmcp-server: the same tool in-process, no sandbox), in one
run, interleaved: for every concurrency level and round, each server is started fresh, loaded by
bench/client's `mcpd-http-bench` (closed loop, one keep-alive connection per session, a 4 KiB
read_text_file per call), and stopped; the order alternates between rounds.

Per point: calls/s, p50, p99, the server's CPU per call (mcpd: the broker, and its workers
apart), PSS at the end of the load and once the sessions are idle, and the session setup time.
Then cold starts (a new session's initialize → first result, one after the other). Prints a
table of medians over the rounds with the mcpd/rmcp ratios, and writes everything as JSON.

Usage: bench/http.sh [--levels 1,16,64,256,1000] [--secs 4] [--rounds 2] [--out FILE]
"""
import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"{what} did not listen on {port}")


def pss_tree_kib(root):
    """PSS of `root` and of its descendants, KiB, and how many descendants."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    s = f.read()
                parent[int(d)] = int(s[s.rindex(")") + 2:].split()[1])
            except (OSError, ValueError):
                pass

    def pss(pid):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    own, desc, n = pss(root), 0, 0
    for pid in parent:
        p, depth = pid, 0
        while p in parent and depth < 64:
            if parent[p] == root:
                desc += pss(pid)
                n += 1
                break
            p, depth = parent[p], depth + 1
    return own, desc, n


class Server:
    def __init__(self, name, argv, port, env=None):
        self.name, self.port = name, port
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.err, env=env)
        wait_listening(port, self.proc, name)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def mcpd_config(work, port, data, sessions, audit):
    n = max(sessions * 2, 64)
    cfg = f"""[server]
cgroup = "off"
[http]
listen = "127.0.0.1:{port}"
client = "bench"
max_sessions = {max(n, 64)}
max_connections = {n + 64}
max_connections_per_ip = {n + 64}
session_idle_secs = 600
[clients.bench]
read = ["{data}"]
[clients.bench.limits]
max_sessions = {n}
max_concurrent_calls = {n}
"""
    if audit:
        cfg += f'[audit]\npath = "{work}/audit-{port}.jsonl"\nmode = "batch"\n'
    path = f"{work}/mcpd-{port}.toml"
    with open(path, "w") as f:
        f.write(cfg)
    return path


def start(name, args, work, data, sessions):
    port = free_port()
    if name != "rmcp":
        binary = args.mcpd if name == "mcpd" else dict(args.also)[name]
        cfg = mcpd_config(work, port, data, sessions, args.audit == "on")
        env = dict(os.environ, MCPD_LOG="warn")
        return Server(name, [binary, "serve", "--config", cfg, "--log", "warn"], port, env)
    return Server(name, [args.rmcp, "--http", f"127.0.0.1:{port}"], port)


def client(args, server, file, sessions, cold_runs=0):
    argv = [args.client, "--addr", f"127.0.0.1:{server.port}", "--file", file]
    if cold_runs:
        argv += ["--cold-runs", str(cold_runs)]
    else:
        argv += ["--sessions", str(sessions), "--secs", str(args.secs),
                 "--warmup-secs", str(args.warmup), "--pid", str(server.proc.pid)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if r.stderr.strip():
        print(f"  [{server.name}] {r.stderr.strip()}", file=sys.stderr)
    if r.returncode != 0:
        server.err.seek(0)
        sys.exit(f"{server.name} at {sessions} sessions: {r.stderr.strip()}\n"
                 f"server stderr: {server.err.read().decode(errors='replace')[-2000:]}")
    return json.loads(r.stdout)


def med(points, key):
    vals = [p[key] for p in points if key in p]
    return statistics.median(vals) if vals else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mcpd", default=f"{TOP}/target/release/mcpd")
    ap.add_argument("--rmcp", default=f"{HERE}/rmcp-server/target/release/rmcp-bench-server")
    ap.add_argument("--client", default=f"{TOP}/target/release/mcpd-http-bench")
    ap.add_argument("--levels", default="1,16,64,256,1000")
    ap.add_argument("--secs", type=float, default=4.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cold-runs", type=int, default=30)
    ap.add_argument("--audit", choices=["on", "off"], default="on",
                    help="mcpd writes its audit log (batch mode, as shipped); default on")
    ap.add_argument("--also", action="append", default=[], metavar="NAME=PATH",
                    help="another mcpd build in the same run (e.g. before=/tmp/old/mcpd; its "
                         "mcpd-worker beside it)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.also = [tuple(a.split("=", 1)) for a in args.also]
    levels = [int(x) for x in args.levels.split(",")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(65536, soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    except (ValueError, OSError):
        pass

    work = tempfile.mkdtemp(prefix="mcpd-http-bench-")
    data = f"{work}/data"
    os.mkdir(data)
    file = f"{data}/file4k.txt"
    with open(file, "w") as f:
        f.write(("0123456789abcdef" * 256)[:4096])

    results = {"command": " ".join(sys.argv), "levels": levels, "secs": args.secs,
               "rounds": args.rounds, "audit": args.audit, "points": [], "cold": []}
    names = ["mcpd", "rmcp"] + [n for n, _ in args.also]
    for level in levels:
        for r in range(args.rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                s = start(name, args, work, data, level)
                try:
                    p = client(args, s, file, level)
                    time.sleep(0.3)
                    own, desc, n = pss_tree_kib(s.proc.pid)
                    p.update(server=name, round=r, idle_server_pss_kib=own,
                             idle_children_pss_kib=desc, idle_children=n)
                    p["idle_pss_kib_per_session"] = (own + desc) / level
                finally:
                    s.stop()
                results["points"].append(p)
                print(f"  {name:5} {level:5} sessions round {r}: {p['calls_per_s']:9.0f} calls/s "
                      f"p50 {p['p50_us']:7.0f} us p99 {p['p99_us']:7.0f} us errors {p['errors']}",
                      file=sys.stderr, flush=True)
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            s = start(name, args, work, data, 1)
            try:
                c = client(args, s, file, 1, cold_runs=args.cold_runs)
            finally:
                s.stop()
            c.update(server=name, round=r)
            results["cold"].append(c)

    print()
    print(f"Streamable HTTP, 4 KiB read_text_file, closed loop, {args.secs:g} s per point, "
          f"median of {args.rounds} interleaved rounds; mcpd audit log {args.audit}, cgroups off")
    hdr = (f"{'sessions':>8} {'server':6} {'calls/s':>9} {'p50 us':>8} {'p99 us':>8} "
           f"{'srv cpu/call':>12} {'wrk cpu/call':>12} {'PSS MiB':>8} {'idle PSS/sess':>13} "
           f"{'errors':>6}")
    print(hdr)
    summary = []
    for level in levels:
        row = {}
        for name in names:
            pts = [p for p in results["points"] if p["server"] == name and p["sessions"] == level]
            m = {k: med(pts, k) for k in ("calls_per_s", "p50_us", "p99_us",
                                           "server_cpu_us_per_call", "children_cpu_us_per_call",
                                           "server_pss_kib", "children_pss_kib",
                                           "idle_pss_kib_per_session", "errors")}
            # Failed calls, all rounds together: a point with any is not a clean measurement
            # (each failure opens a new session, whose worker start loads the machine).
            m["errors_total"] = sum(p.get("errors", 0) for p in pts)
            row[name] = m
            pss = (m["server_pss_kib"] + m["children_pss_kib"]) / 1024
            print(f"{level:>8} {name:6} {m['calls_per_s']:>9.0f} {m['p50_us']:>8.0f} "
                  f"{m['p99_us']:>8.0f} {m['server_cpu_us_per_call']:>9.1f} us "
                  f"{m['children_cpu_us_per_call']:>9.1f} us {pss:>8.1f} "
                  f"{m['idle_pss_kib_per_session'] / 1024:>9.2f} MiB {m['errors_total']:>6}")
        entry = {"sessions": level, **row}
        for name in names:
            if name == "rmcp":
                continue
            ratio = row[name]["calls_per_s"] / row["rmcp"]["calls_per_s"]
            p99r = row[name]["p99_us"] / row["rmcp"]["p99_us"]
            print(f"{'':>8} ratio {name}/rmcp: calls/s {ratio:.2f}x, p99 {p99r:.2f}x")
            entry[f"{name}_calls_per_s_ratio"] = ratio
            entry[f"{name}_p99_ratio"] = p99r
        summary.append(entry)
    for name in names:
        cs = [c for c in results["cold"] if c["server"] == name]
        print(f"cold start (new session → first result) {name}: median "
              f"{med(cs, 'cold_median_ms'):.2f} ms, min {min(c['cold_min_ms'] for c in cs):.2f} ms")
    results["summary"] = summary
    out = args.out or os.path.join(HERE, "results", time.strftime("http-%Y%m%d-%H%M%S.json"))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
