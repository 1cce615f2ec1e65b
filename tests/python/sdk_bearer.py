"""The official Python MCP SDK (mcp==2.3.0) against mcpd's HTTP listener with an OAuth bearer
token in the Authorization header (an httpx client with default headers), over HTTP or HTTPS:
list the tools the token's client may see, read its file, and be denied another file.

Usage: python3 sdk_bearer.py URL TOKEN FILE MODE [EXPECTED_TEXT]
Env: MCPD_CA (CA file to verify an https:// server with). Exits non-zero (with a message) on
any mismatch. Run by tests/tests/jwt.rs and tests/tests/tls.rs.
"""
import asyncio
import os
import ssl
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT, MCP_DEFAULT_TIMEOUT


def http_client(token):
    kwargs = {"timeout": httpx2.Timeout(MCP_DEFAULT_TIMEOUT, read=MCP_DEFAULT_SSE_READ_TIMEOUT)}
    kwargs["headers"] = {"Authorization": f"Bearer {token}"}
    ca = os.environ.get("MCPD_CA")
    if ca:
        ctx = ssl.create_default_context(cafile=ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        kwargs["verify"] = ctx
    return httpx2.AsyncClient(**kwargs)


async def exercise(url, token, path, mode, expected):
    http = http_client(token)
    async with http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as c:
            tools = await c.list_tools()
            names = sorted(t.name for t in tools.tools)
            assert "read_text_file" in names, names
            assert "run_command" not in names, names
            r = await c.call_tool("read_text_file", {"path": path})
            assert not r.is_error, r
            assert r.content[0].text == expected, r
            r = await c.call_tool("read_text_file", {"path": "/etc/passwd"})
            assert r.is_error, r
            print(f"ok ({mode}): {len(names)} tools listed with a bearer token")


def main():
    url, token, path, mode = sys.argv[1:5]
    expected = sys.argv[5] if len(sys.argv) > 5 else "alice's file\n"
    asyncio.run(exercise(url, token, path, mode, expected))


if __name__ == "__main__":
    main()
