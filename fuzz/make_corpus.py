#!/usr/bin/env python3
"""Writes the text seed corpora under fuzz/corpus/ from messages, policies and logs shaped like
the test suites' (broker/src/mcp/*tests*, policy/src/decide.rs, audit/src/tests.rs,
packaging/mcpd.toml). The binary IPC seeds come from `cargo +nightly fuzz run ipc_roundtrip`
runs and are committed as they are. Run from anywhere: python3 fuzz/make_corpus.py"""
import hashlib, json, os, pathlib, random

here = pathlib.Path(__file__).resolve().parent
corpus = here / "corpus"

def put(target, name, data):
    d = corpus / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())

META_V = "io.modelcontextprotocol/protocolVersion"
META_C = "io.modelcontextprotocol/clientCapabilities"
MSGS = [
    {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {"roots": {}}, "clientInfo": {"name": "t", "version": "1"}}},
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    {"jsonrpc": "2.0", "id": 2, "method": "ping"},
    {"jsonrpc": "2.0", "id": "a", "method": "tools/list", "params": {"cursor": "100"}},
    {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "read_text_file", "arguments": {"path": "/srv/data/x", "head": 3}, "_meta": {"progressToken": "p1"}}},
    {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7, "reason": "user"}},
    {"jsonrpc": "2.0", "id": 3, "method": "server/discover", "params": {"_meta": {META_V: "2026-07-28", META_C: {}}}},
    {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "t", "arguments": {}, "requestState": "AAAA.BBBB", "inputResponses": {}, "_meta": {META_V: "2026-07-28", META_C: {"elicitation": {}}, "io.modelcontextprotocol/logLevel": "debug"}}},
    {"jsonrpc": "2.0", "id": 9, "result": {"roots": [{"uri": "file:///srv/data"}]}},
    {"jsonrpc": "2.0", "id": 10, "error": {"code": -32601, "message": "no"}},
    {"jsonrpc": "2.0", "id": 5, "method": "resources/read", "params": {"uri": "file:///srv/data/a%20b"}},
    {"jsonrpc": "2.0", "id": 6, "method": "logging/setLevel", "params": {"level": "warning"}},
]
for i, m in enumerate(MSGS):
    put("jsonrpc_classify", f"msg{i:02}.json", json.dumps(m))
for i, t in enumerate(['{"jsonrpc":"1.0","id":2,"method":"ping"}', '[{"jsonrpc":"2.0","id":1,"method":"ping"}]',
                       '{"jsonrpc":"2.0","id":null,"method":"x","params":[1]}', '{"jsonrpc":"2.0","id":1.5,"method":"ping"}']):
    put("jsonrpc_classify", f"bad{i:02}.json", t)

# stdio: framing bytes; the first two bytes are the line limit and the chunk size.
lines = "\n".join(json.dumps(m) for m in MSGS[:4]) + "\n"
put("stdio_lines", "session", b"\x3f\x07" + lines.encode())
put("stdio_lines", "crlf", b"\x10\x03" + b'{"a":1}\r\n\r\n\xff\xfe\nlast')
put("stdio_lines", "long", b"\x08\x1f" + b"0123456789abcdef\nok\n" + b"x" * 40)

# policies
repo = here.parent
put("policy_toml", "packaging.toml", (repo / "packaging" / "mcpd.toml").read_text())
put("policy_toml", "decide.toml", '''
[stdio]
client = "alice"

[clients.alice]
roles = ["reader"]
write = ["/srv/out"]

[clients.bob]
read = ["/home/bob"]
tools = ["read_text_file"]

[roles.reader]
read = ["/srv/data"]
[roles.reader.limits]
call_timeout_secs = 30
''')
put("policy_toml", "exec.toml", '''
[clients.dev]
read = ["/srv/src"]
write = ["/srv/src/target"]
tools = ["*"]
[clients.dev.exec]
programs = [{ path = "/usr/bin/git", args = ["status", "log", "--oneline"] }, "/usr/bin/make"]
languages = ["python"]
[clients.dev.limits]
calls_per_minute = 60
max_concurrent_calls = 2
[http]
listen = "127.0.0.1:8080"
''')
put("policy_toml", "missing.toml", '[clients.x]\nread = ["/missing/dir"]\n')

# audit logs: a valid chain (JCS of these values is sorted compact JSON), and a broken one.
def chain(n, start_event="broker.started"):
    prev, out = "0" * 64, []
    for seq in range(n):
        r = {"schema_version": 1, "seq": seq, "ts": "2026-01-01T00:00:00.000000Z", "id": f"r{seq}",
             "event": start_event if seq == 0 else "call.decided", "prev": prev, "client": "alice",
             "tool": "read_text_file", "decision": "allow"}
        h = hashlib.sha256(json.dumps(r, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        r["hash"] = h
        prev = h
        out.append(json.dumps(r, separators=(",", ":")))
    return "\n".join(out) + "\n"
good = chain(4)
put("audit_verify", "good", b"\x00" + good.encode())
put("audit_verify", "split", b"\x80" + good.encode())
put("audit_verify", "modified", b"\x00" + good.replace("alice", "mallo", 1).encode())
put("audit_verify", "truncated_line", b"\x00" + good.encode()[:-20])
# audit_jcs: JSON where a canonicaliser could go wrong (RFC 8785's examples, astral keys
# against U+E000.., integers past 2^53, -0, exponents, escapes) and a record line.
JCS = {
    "rfc8785": '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001], "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/", "literals": [null, true, false]}',
    "sorting": '{"\\u20ac": 1, "\\r": 2, "\\ufb33": 3, "1": 4, "\\ud83d\\ude00": 5, "\\u0080": 6, "\\u00f6": 7, "\\ue000": 8}',
    "numbers": '[0, -0, -0.0, 5e-324, 1.7976931348623157e308, 9007199254740993, -9223372036854775808, 18446744073709551615, 1e21, 1e-7, 123456789012345680000]',
    "record": good.splitlines()[1],
}
for name, text in JCS.items():
    put("audit_jcs", name, text)

# arbitrary-driven targets: a few random inputs to start from.
rng = random.Random(14)
for t in ["jsonrpc_mcp", "ipc_roundtrip", "policy_paths", "seal_state", "audit_chain",
          "worker_paths", "worker_globs", "worker_edit"]:
    for i in range(3):
        put(t, f"random{i}", bytes(rng.randrange(256) for _ in range(rng.choice([32, 128, 512]))))
put("worker_globs", "patterns", b"**/*.rs\x00src/{a,b}/*.tx[tT]\x00target\x00.git\x00src/main.rs\x00a/target/x\x00")
put("worker_paths", "text", b"\x01\x04\x00\x0e\x02")
put("worker_edit", "indent", b"fn main() {\n    let x = 1;\n}\n\x00  let x = 1;\x00    let y = 2;\n    let z = 3;")

# jwt: raw Authorization values (first byte 0xF0 + policy index: multi, single, jwks), tokens
# signed with the target's fixed test keys (fixtures/jwt/), valid until 2100 unless named
# otherwise; then random inputs for the structure-aware half. Needs the `cryptography` module.
import base64
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils
fx = here / "fixtures" / "jwt"
key = lambda n: serialization.load_pem_private_key((fx / n).read_bytes(), None)
b64u = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
ISS, ISS2, AUD, EXP = "https://idp.example.test", "https://login.example.test/tenant", "https://mcp.example.test/mcp", 4102444800
def jwt(header, claims, sign):
    signed = b64u(json.dumps(header).encode()) + "." + b64u(json.dumps(claims).encode())
    return signed + "." + b64u(sign(signed.encode()))
def ed(m): return key("ed.pem").sign(m)
def es(m):
    r, s = utils.decode_dss_signature(key("ec.pem").sign(m, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")
def rs(m): return key("rsa.pem").sign(m, padding.PKCS1v15(), hashes.SHA256())
def hs_pem(m):
    h = hmac.HMAC((fx / "ed.pub").read_bytes(), hashes.SHA256()); h.update(m); return h.finalize()
c = lambda **kw: {"iss": ISS, "aud": AUD, "exp": EXP, **kw}
for i, (pol, tok) in enumerate([
    (0, jwt({"alg": "EdDSA", "kid": "ed"}, c(sub="alice", scope="mcp:read mcp:exec"), ed)),
    (0, jwt({"alg": "ES256", "kid": "ec", "typ": "JWT"}, c(sub="bob@example.test", aud=[AUD, "x"], nbf=1000000000), es)),
    (0, jwt({"alg": "RS256", "kid": "rsa"}, c(sub="alice", scp=["mcp:read"]), rs)),
    (0, jwt({"alg": "RS256", "kid": "ps"}, c(sub="alice"), rs)),
    (0, jwt({"alg": "HS256", "kid": "ed"}, c(sub="alice"), hs_pem)),
    (0, jwt({"alg": "EdDSA", "kid": "ed"}, c(sub="alice", exp=1000000000), ed)),
    (0, jwt({"alg": "EdDSA", "kid": "ed", "crit": ["exp"]}, c(sub="alice"), ed)),
    (0, jwt({"alg": "EdDSA", "kid": "ed"}, c(sub="alice", iss=[ISS, "https://evil.example.test"]), ed)),
    (0, b64u(b'{"alg":"none"}') + "." + b64u(json.dumps(c(sub="alice")).encode()) + "."),
    (1, jwt({"alg": "EdDSA"}, c(email="alice@example.test", sub="nobody"), ed)),
    (2, jwt({"alg": "ES256", "kid": "jwk-ec"}, c(iss=ISS2, sub="carol"), es)),
    (2, jwt({"alg": "EdDSA", "kid": "jwk-gone"}, c(iss=ISS2, sub="carol"), ed)),
]):
    put("jwt", f"token{i:02}", bytes([0xF0 + pol]) + ("Bearer " + tok).encode())
rng = random.Random(16)
for t in ["jwt", "mcp_param_headers"]:
    for i in range(3):
        put(t, f"random{i}", bytes(rng.randrange(256) for _ in range(rng.choice([64, 256, 1024]))))
