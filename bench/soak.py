#!/usr/bin/env python3
"""Soak run (driven by bench/soak.sh): SESSIONS stdio clients, each starting its own
`mcpd serve --stdio` per session, and SESSIONS HTTP clients on one `mcpd serve --http` broker,
churn for MINUTES: open a session, a mix of file reads and listings, run_command of an allowed
program, run_code (python3), close. Loopback only; stops by itself.

Every SAMPLE seconds it records the HTTP broker's fd count, RSS and thread count, the number
of mcpd-worker processes (of this build) and of this run's brokers' cgroups, and prints a row.
At the end it prints the table's summary and fails (exit 1) if a metric grows without bound:
the mean of the last third of the samples (after a warm-up tenth) exceeds the first third's by
more than TOL (relative) plus a per-metric slack, or the linear fit over the same samples
projects more than that growth over the run; and if anything is left once every session has
closed (workers, cgroups), or any call failed.

Usage: soak.py MCPD WORKER MINUTES SESSIONS
"""
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

SAMPLE = float(os.environ.get("SOAK_SAMPLE_SECS", "5"))
TOL = float(os.environ.get("SOAK_TOL", "0.25"))
# metric -> absolute slack on top of TOL (workers and cgroups follow the churn).
SLACK = {"fds": 8, "rss_kib": 8192, "threads": 4, "workers": None, "cgroups": None}

mcpd, worker_bin, minutes, sessions = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
deadline = time.monotonic() + minutes * 60
work = tempfile.mkdtemp(prefix="mcpd-soak-")
data = os.path.join(work, "data")
os.makedirs(os.path.join(data, "sub"))
for i in range(20):
    with open(os.path.join(data, f"f{i}.txt"), "w") as f:
        f.write(f"line {i}\n" * 100)
with open(os.path.join(data, "sub", "deep.txt"), "w") as f:
    f.write("deep\n")
cfg = os.path.join(work, "mcpd.toml")
with open(cfg, "w") as f:
    f.write(f"""[stdio]
client = "soak"
[http]
client = "soak"
max_sessions = {4 * sessions + 8}
[clients.soak]
write = ["{data}"]
exec = ["cat", "wc"]
code = ["python3"]
[clients.soak.limits]
max_sessions = {4 * sessions + 8}
""")

lock = threading.Lock()
stats = {"sessions": 0, "calls": 0, "errors": 0}
errors = []
brokers = set()  # pids of every broker this run started (their cgroups are ours)


def fail(msg):
    with lock:
        stats["errors"] += 1
        if len(errors) < 20:
            errors.append(msg)


def mix(n):
    """The calls of one session: (tool, arguments, check)."""
    return [
        ("list_directory", {"path": data}, lambda r: "f1.txt" in text(r)),
        ("read_text_file", {"path": os.path.join(data, f"f{n % 20}.txt")}, lambda r: text(r).startswith("line")),
        ("directory_tree", {"path": data}, lambda r: "deep.txt" in text(r)),
        ("search_files", {"path": data, "pattern": "*.txt"}, lambda r: "f1.txt" in text(r)),
        ("get_file_info", {"path": os.path.join(data, "f2.txt")}, lambda r: not r.get("isError")),
        ("run_command", {"command": "wc", "args": ["-l", os.path.join(data, "f3.txt")]},
         lambda r: r.get("structuredContent", {}).get("stdout", "").startswith("100 ")),
        ("run_command", {"command": "cat", "args": [os.path.join(data, "sub", "deep.txt")]},
         lambda r: r.get("structuredContent", {}).get("stdout") == "deep\n"),
        ("run_code", {"language": "python3", "code": f"x = {n}\nsum(range(1000)) + x"},
         lambda r: r.get("structuredContent", {}).get("stdout") == f"{499500 + n}\n"),
    ]


def text(r):
    c = r.get("content") or [{}]
    return c[0].get("text", "")


INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "soak", "version": "0"}}


def stdio_loop(k):
    n = 0
    while time.monotonic() < deadline:
        n += 1
        p = subprocess.Popen([mcpd, "serve", "--stdio", "--config", cfg, "--worker", worker_bin, "--log", "warn"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
        with lock:
            brokers.add(p.pid)
        ids = iter(range(1, 1 << 30))

        def rpc(method, params):
            i = next(ids)
            p.stdin.write((json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": params}) + "\n").encode())
            while True:
                line = p.stdout.readline()
                if not line:
                    raise RuntimeError("stdio broker closed its stdout")
                m = json.loads(line)
                if m.get("id") == i:
                    return m

        try:
            rpc("initialize", INIT)
            p.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
            for tool, args, ok in mix(n + k):
                m = rpc("tools/call", {"name": tool, "arguments": args})
                with lock:
                    stats["calls"] += 1
                if "result" not in m or not ok(m["result"]):
                    fail(f"stdio {tool}: {json.dumps(m)[:300]}")
            p.stdin.close()
            if p.wait(timeout=30) != 0:
                fail(f"stdio broker exit {p.returncode}")
        except Exception as e:  # noqa: BLE001 - any failure is counted, the soak goes on
            fail(f"stdio session: {e!r}")
            p.kill()
            p.wait()
        with lock:
            stats["sessions"] += 1


def http_loop(k, port):
    n = 0
    hdr = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
           "MCP-Protocol-Version": "2025-11-25", "Host": f"127.0.0.1:{port}"}

    def post(body, sid=None, method="POST"):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        h = dict(hdr)
        if sid:
            h["Mcp-Session-Id"] = sid
        c.request(method, "/mcp", body=json.dumps(body) if body is not None else None, headers=h)
        r = c.getresponse()
        raw = r.read()
        c.close()
        msgs = []
        if r.getheader("Content-Type", "").startswith("text/event-stream"):
            for line in raw.decode().splitlines():
                if line.startswith("data:") and line[5:].strip():
                    msgs.append(json.loads(line[5:]))
        elif raw:
            msgs.append(json.loads(raw))
        return r.status, r.getheader("Mcp-Session-Id"), msgs

    while time.monotonic() < deadline:
        n += 1
        try:
            st, sid, _ = post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": INIT})
            if st != 200 or not sid:
                raise RuntimeError(f"initialize: HTTP {st}")
            post({"jsonrpc": "2.0", "method": "notifications/initialized"}, sid)
            for i, (tool, args, ok) in enumerate(mix(n + k), start=2):
                st, _, msgs = post({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                                    "params": {"name": tool, "arguments": args}}, sid)
                m = next((x for x in msgs if x.get("id") == i), {})
                with lock:
                    stats["calls"] += 1
                if st != 200 or "result" not in m or not ok(m["result"]):
                    fail(f"http {tool}: HTTP {st} {json.dumps(m)[:300]}")
            st, _, _ = post(None, sid, method="DELETE")
            if st >= 300:
                fail(f"http DELETE: {st}")
        except Exception as e:  # noqa: BLE001
            fail(f"http session: {e!r}")
        with lock:
            stats["sessions"] += 1


def proc_field(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def workers():
    n = 0
    real = os.path.realpath(worker_bin)
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.readlink(f"/proc/{d}/exe") == real:
                    n += 1
            except OSError:
                pass
    return n


GROUP = re.compile(r"^mcpd-(\d+)-\d+$")
# Groups older than this run are not ours even when their pid matches one of our brokers'
# (pids are recycled: a run starts thousands of brokers; killed brokers elsewhere leave groups).
RUN_STARTED = time.time()


def cgroups():
    """Directories mcpd-<broker pid>-<n> of this run's brokers, in every hierarchy."""
    n = 0
    with lock:
        ours = set(brokers)
    for top, dirs, _ in os.walk("/sys/fs/cgroup"):
        if top.count("/") > 6:
            dirs[:] = []
            continue
        keep = []
        for d in dirs:
            m = GROUP.match(d)
            if m:
                if int(m.group(1)) in ours:
                    try:
                        made = os.stat(os.path.join(top, d)).st_mtime
                    except OSError:
                        continue
                    if made >= RUN_STARTED - 1:
                        n += 1
            else:
                keep.append(d)
        dirs[:] = keep
    return n


http_err = open(os.path.join(work, "http.log"), "w+")
hp = subprocess.Popen([mcpd, "serve", "--http", "127.0.0.1:0", "--config", cfg, "--worker", worker_bin,
                       "--log", "info"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=http_err)
brokers.add(hp.pid)
port = None
for _ in range(500):
    m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", open(http_err.name).read())
    if m:
        port = int(m.group(1))
        break
    time.sleep(0.02)
if port is None:
    sys.exit("HTTP broker did not start:\n" + open(http_err.name).read())

threads = [threading.Thread(target=stdio_loop, args=(k,), daemon=True) for k in range(sessions)]
threads += [threading.Thread(target=http_loop, args=(k, port), daemon=True) for k in range(sessions)]
t0 = time.monotonic()
for t in threads:
    t.start()

rows = []
print(f"{'t_s':>6} {'fds':>5} {'rss_kib':>8} {'threads':>7} {'workers':>7} {'cgroups':>7} {'sessions':>8} {'calls':>7} {'errors':>6}",
      flush=True)


def sample():
    row = {"t_s": time.monotonic() - t0, "fds": len(os.listdir(f"/proc/{hp.pid}/fd")),
           "rss_kib": proc_field(hp.pid, "VmRSS"), "threads": proc_field(hp.pid, "Threads"),
           "workers": workers(), "cgroups": cgroups()}
    with lock:
        row.update(stats)
    print(f"{row['t_s']:6.0f} {row['fds']:5d} {row['rss_kib']:8d} {row['threads']:7d} {row['workers']:7d} "
          f"{row['cgroups']:7d} {row['sessions']:8d} {row['calls']:7d} {row['errors']:6d}", flush=True)
    return row


while time.monotonic() < deadline:
    rows.append(sample())
    time.sleep(max(0.0, min(SAMPLE, deadline - time.monotonic())))
for t in threads:
    t.join(timeout=120)
# Every session is closed: workers and their cgroups must go (their removal is asynchronous).
# Run nothing else with this build meanwhile: its workers would be counted, and another
# broker's groups may carry a recycled pid of one of ours.
settle = time.monotonic() + 15
while True:
    time.sleep(1)
    final = sample()
    if (final["workers"] == 0 and final["cgroups"] == 0) or time.monotonic() > settle:
        break
hp.terminate()
hp.wait(timeout=30)

bad = []
if any(t.is_alive() for t in threads):
    bad.append("a client thread did not finish")
warm = rows[len(rows) // 10:]
if len(warm) >= 6:
    third = len(warm) // 3
    print("\nmetric    first-third  last-third  max    slope/min  verdict")
    for key, slack in SLACK.items():
        slack = sessions * 2 + 2 if slack is None else slack
        ys = [r[key] for r in warm]
        xs = [r["t_s"] for r in warm]
        a = sum(ys[:third]) / third
        b = sum(ys[-third:]) / third
        mx = sum(xs) / len(xs)
        my = sum(ys) / len(ys)
        den = sum((x - mx) ** 2 for x in xs) or 1.0
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den
        projected = slope * (xs[-1] - xs[0])
        limit = a * TOL + slack
        grows = b - a > limit or projected > limit
        print(f"{key:9} {a:11.1f} {b:11.1f} {max(ys):6d} {slope * 60:10.2f}  {'GROWS' if grows else 'ok'}")
        if grows:
            bad.append(f"{key} grows: first third {a:.1f}, last third {b:.1f}, fit +{projected:.1f} over the run (limit +{limit:.1f})")
else:
    bad.append(f"only {len(warm)} samples after warm-up: run longer (MINUTES) or sample faster (SOAK_SAMPLE_SECS)")
if final["workers"]:
    bad.append(f"{final['workers']} mcpd-worker process(es) left after every session closed")
if final["cgroups"]:
    bad.append(f"{final['cgroups']} cgroup(s) left after every session closed")
if stats["errors"]:
    bad.append(f"{stats['errors']} failed calls or sessions, e.g.: " + "; ".join(errors[:5]))
if stats["calls"] == 0:
    bad.append("no call was made")
print(f"\n{stats['sessions']} sessions, {stats['calls']} calls, {stats['errors']} errors in {final['t_s']:.0f} s "
      f"({sessions} stdio + {sessions} HTTP clients)")
if bad:
    print("FAIL: " + "\nFAIL: ".join(bad))
    sys.exit(1)
print("PASS: nothing grows without bound, nothing is left behind")
