"""How `UpstreamProxy` talks to its upstream: one small interface, two HTTP clients behind it.

* `HttpxTransport` (`_httpx.py`; httpx, the default dependency): any anyio backend, asyncio or
  trio, and the only choice with a caller's own `httpx.AsyncClient`.
* `AiohttpTransport` (`_aiohttp.py`, the `aiohttp` extra): asyncio only. Under load it costs a
  fraction of httpx's CPU per request, and its cost does not grow with the number of pooled
  connections (httpcore walks every pooled connection, with a socket poll each, on every request
  and every release; see benchmarks/README.md).

`choose()` picks per running backend: aiohttp when the proxy runs on asyncio and aiohttp is
installed (as under uvicorn), else httpx. Both raise the same `httpx.TransportError` subclasses,
so that errors map to the same statuses and messages whichever client sent the request.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import Any, Literal, Protocol

import httpx

__all__ = [
    "Headers",
    "Transport",
    "TransportName",
    "UpstreamResponse",
    "aiohttp_available",
    "choose",
    "on_asyncio",
]

TransportName = Literal["auto", "httpx", "aiohttp"]
Headers = list[tuple[bytes, bytes]]


class UpstreamResponse(Protocol):
    """An upstream response whose head has arrived; the body is read with `chunks()`."""

    status: int
    raw_headers: Headers
    # Case-insensitive `.get(name, default)`, for the observability hooks.
    headers: Mapping[str, str]

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it comes off the wire: de-chunked, never decompressed."""
        ...

    async def aclose(self, *, complete: bool) -> None:
        """Give the connection back (`complete`: the body was read to its end) or drop it."""
        ...


class Transport(Protocol):
    name: str
    # Runs on asyncio only: the proxy then drives the exchange with asyncio's own tasks.
    asyncio_only: bool

    @property
    def closed(self) -> bool: ...

    def usable(self) -> bool:
        """Whether this transport can serve a request in the running event loop."""
        ...

    async def send(
        self, method: str, url: httpx.URL, headers: Headers, content: bytes | AsyncIterable[bytes]
    ) -> UpstreamResponse:
        """Send a request; return once the response head has arrived.

        Raises `httpx.TransportError` subclasses: `PoolTimeout` (no free connection in time),
        `ConnectTimeout`, `ReadTimeout`, `WriteTimeout`, `ConnectError`, `ReadError`,
        `RemoteProtocolError`.
        """
        ...

    async def aclose(self) -> None: ...


def aiohttp_available() -> bool:
    return importlib.util.find_spec("aiohttp") is not None


def on_asyncio() -> bool:
    """Whether an asyncio event loop runs this thread (False under trio)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def choose(
    name: TransportName,
    *,
    timeout: httpx.Timeout,
    limits: httpx.Limits,
    trust_env: bool,
    extensions: dict[str, Any],
) -> Transport:
    """A new transport of this name; "auto": aiohttp on asyncio when installed, else httpx."""
    if name == "auto":
        name = "aiohttp" if on_asyncio() and aiohttp_available() else "httpx"
    if name == "aiohttp":
        from ._aiohttp import AiohttpTransport

        return AiohttpTransport(timeout=timeout, limits=limits, trust_env=trust_env)
    from ._httpx import HttpxTransport

    return HttpxTransport.owned(
        timeout=timeout, limits=limits, trust_env=trust_env, extensions=extensions
    )
