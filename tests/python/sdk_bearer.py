"""The official Python MCP SDK (mcp==2.3.0) against mcpd's HTTP listener with an OAuth bearer
token in the Authorization header (an httpx client with default headers): list the tools the
token's client may see, read its file, and be denied another client's file.

Usage: python3 sdk_bearer.py URL TOKEN FILE MODE
Exits non-zero (with a message) on any mismatch. Run by tests/tests/jwt.rs.
"""
import asyncio
import sys

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def exercise(url, token, path, mode):
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as c:
            tools = await c.list_tools()
            names = sorted(t.name for t in tools.tools)
            assert "read_text_file" in names, names
            assert "run_command" not in names, names
            r = await c.call_tool("read_text_file", {"path": path})
            assert not r.is_error, r
            assert r.content[0].text == "alice's file\n", r
            r = await c.call_tool("read_text_file", {"path": "/etc/passwd"})
            assert r.is_error, r
            print(f"ok ({mode}): {len(names)} tools listed with a bearer token")


def main():
    url, token, path, mode = sys.argv[1:5]
    asyncio.run(exercise(url, token, path, mode))


if __name__ == "__main__":
    main()
