"""The official Python MCP SDK (mcp==2.3.0, default "auto" mode) against the real mcpd, over
stdio and over Streamable HTTP (TCP, TLS, or a Unix socket): list the tools, call one, and see
a policy denial.

Usage: python3 sdk_client.py stdio MCPD ROOT [MODE]
       python3 sdk_client.py http URL ROOT [MODE]
       python3 sdk_client.py https URL ROOT MODE CA_PEM [CLIENT_CERT_PEM CLIENT_KEY_PEM]
       python3 sdk_client.py unix SOCKET ROOT [MODE]
MODE is the SDK's connect mode: "auto" (default: server/discover, the 2026-07-28 stateless
era when the server offers it) or "legacy" (initialize, the session era).
Exits non-zero (with a message) on any mismatch. Run by tests/tests/python_sdk.rs.
"""
import asyncio
import os
import sys

from mcp import Client, StdioServerParameters


async def exercise(client_target, root, mode):
    async with Client(client_target, mode=mode) as c:
        tools = await c.list_tools()
        names = sorted(t.name for t in tools.tools)
        for want in ("read_text_file", "list_directory", "list_allowed_directories"):
            assert want in names, f"{want} not listed: {names}"
        assert "write_file" not in names, f"read-only client sees write_file: {names}"
        r = await c.call_tool("read_text_file", {"path": os.path.join(root, "hello.txt")})
        assert not r.is_error, r
        assert r.content[0].text == "hello from mcpd\n", r
        r = await c.call_tool("read_text_file", {"path": "/etc/passwd"})
        assert r.is_error, r
        assert r.content[0].text == "Access denied - path outside allowed directories", r
        r = await c.call_tool("list_allowed_directories", {})
        assert root in r.content[0].text, r
        print(f"ok ({mode}): {len(names)} tools listed, read and denial behave")


def main():
    transport, target, root = sys.argv[1], sys.argv[2], sys.argv[3]
    mode = sys.argv[4] if len(sys.argv) > 4 else "auto"
    if transport == "stdio":
        params = StdioServerParameters(
            command=target, args=["serve", "--stdio", "--allow-read", root], env={"MCPD_LOG": "warn"}
        )
        asyncio.run(exercise(params, root, mode))
    elif transport == "http":
        asyncio.run(exercise(target, root, mode))
    elif transport == "https":
        # HTTPS with a CA the client trusts, and (mTLS) a client certificate: the SDK's own
        # transport over an httpx2 client configured with an ssl context.
        import ssl

        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        ctx = ssl.create_default_context(cafile=sys.argv[5])
        if len(sys.argv) > 7:
            ctx.load_cert_chain(sys.argv[6], sys.argv[7])
        http = httpx2.AsyncClient(
            verify=ctx, timeout=httpx2.Timeout(30.0, read=300.0)
        )

        async def run():
            async with http:
                await exercise(streamable_http_client(target, http_client=http), root, mode)

        asyncio.run(run())
    elif transport == "unix":
        # Streamable HTTP over mcpd's Unix socket: the SDK's own transport on an httpx2 client
        # whose connections go to the socket (the URL's host is only the Host header).
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        http = httpx2.AsyncClient(
            transport=httpx2.AsyncHTTPTransport(uds=target),
            timeout=httpx2.Timeout(30.0, read=300.0),
        )

        async def run_unix():
            async with http:
                client = streamable_http_client("http://localhost/mcp", http_client=http)
                await exercise(client, root, mode)

        asyncio.run(run_unix())
    else:
        raise SystemExit(f"unknown transport {transport}")


if __name__ == "__main__":
    main()
