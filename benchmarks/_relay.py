"""A TCP relay on uvloop: the least a proxy in Python can cost, for `gateway.py --relay`.

    python benchmarks/_relay.py PORT UPSTREAM_PORT

Every connection to PORT gets one of its own to the upstream on 127.0.0.1; bytes are passed on
as they arrive, both ways, by asyncio protocols (no HTTP parsing, no Python per request beyond
two callbacks per read). Its CPU per request or per SSE event is the floor of wakeups, socket
calls and event-loop work that any Python proxy pays on this machine, against which the
gateway's own cost can be read.
"""

from __future__ import annotations

import asyncio
import sys


class _Half(asyncio.Protocol):
    """One side of a relayed connection; `peer` is the other side's transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: asyncio.Transport | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.pending.append(data)
        else:
            self.peer.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.close()


async def main() -> None:
    port, upstream_port = int(sys.argv[1]), int(sys.argv[2])
    loop = asyncio.get_running_loop()
    connecting: set[asyncio.Task[None]] = set()

    def accepted() -> _Half:
        client = _Half()

        async def connect() -> None:
            _, upstream = await loop.create_connection(_Half, "127.0.0.1", upstream_port)
            assert client.transport is not None
            assert upstream.transport is not None
            upstream.peer = client.transport
            client.peer = upstream.transport
            for data in client.pending:
                upstream.transport.write(data)
            client.pending.clear()

        task = loop.create_task(connect())
        connecting.add(task)
        task.add_done_callback(connecting.discard)
        return client

    server = await loop.create_server(accepted, "127.0.0.1", port, backlog=2048)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
