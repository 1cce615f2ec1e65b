"""The official Python MCP SDK against the *installed* package: /usr/bin/mcpd as a stdio server
on the installed /etc/mcpd/mcpd.toml (no flags), as an MCP host would start it. Lists the
tools, reads a file the shipped policy grants (/usr/share/doc), and sees a denial outside it.

Usage: python3 installed_stdio.py [MCPD]   (run by packaging/ci-install.sh)
"""
import asyncio
import sys

from mcp import Client, StdioServerParameters


async def main(mcpd):
    params = StdioServerParameters(command=mcpd, args=["serve"], env={"MCPD_LOG": "warn"})
    async with Client(params, mode="legacy") as c:
        names = sorted(t.name for t in (await c.list_tools()).tools)
        assert "read_text_file" in names and "write_file" not in names, names
        r = await c.call_tool("list_allowed_directories", {})
        assert "/usr/share/doc" in r.content[0].text, r
        r = await c.call_tool("read_text_file", {"path": "/usr/share/doc/mcpd/README.md"})
        assert not r.is_error and "mcpd" in r.content[0].text, r
        r = await c.call_tool("read_text_file", {"path": "/etc/mcpd/audit.key"})
        assert r.is_error, r
        assert r.content[0].text == "Access denied - path outside allowed directories", r
        print(f"ok: installed mcpd served {len(names)} tools, a read and a denial")


asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "/usr/bin/mcpd"))
