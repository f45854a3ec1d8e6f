"""How `UpstreamProxy` talks to its upstream: one small interface, three HTTP clients behind it.

* `HttptoolsTransport` (`_httptools.py`, needs httptools: the `server` extra): asyncio only. An
  HTTP/1.1 client of our own on asyncio's protocols and httptools' parser, doing only what a
  proxy needs; the cheapest per request (benchmarks/README.md).
* `AiohttpTransport` (`_aiohttp.py`, the `aiohttp` extra): asyncio only. Under load it costs a
  fraction of httpx's CPU per request, and its cost does not grow with the number of pooled
  connections (httpcore walks every pooled connection, with a socket poll each, on every request
  and every release; see benchmarks/README.md).
* `HttpxTransport` (`_httpx.py`; httpx, the default dependency): any anyio backend, asyncio or
  trio, and the only choice with a caller's own `httpx.AsyncClient`.

`choose()` picks per running backend (`auto_name`): on asyncio httptools, else aiohttp, when
installed (as under uvicorn), else httpx. All raise the same `httpx.TransportError` subclasses,
so that errors map to the same statuses and messages whichever client sent the request.
"""

from __future__ import annotations

import asyncio
import importlib.util
import urllib.request
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from typing import Any, Literal, Protocol, TypeVar

import httpx

__all__ = [
    "AsyncioSlots",
    "Headers",
    "ProxyLookup",
    "Transport",
    "TransportName",
    "UpstreamResponse",
    "aiohttp_available",
    "auto_name",
    "choose",
    "finished_within",
    "httptools_available",
    "on_asyncio",
]

TransportName = Literal["auto", "httpx", "aiohttp", "httptools"]
Headers = list[tuple[bytes, bytes]]


class UpstreamResponse(Protocol):
    """An upstream response whose head has arrived; the body is read with `chunks()`."""

    status: int
    raw_headers: Headers

    @property
    def headers(self) -> Mapping[str, str]:
        """Case-insensitive `.get(name, default)`, for the proxy and the observability hooks."""
        ...

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


def httptools_available() -> bool:
    return importlib.util.find_spec("httptools") is not None


def auto_name(*, asyncio: bool) -> Literal["httpx", "aiohttp", "httptools"]:
    """What "auto" picks: the cheapest client installed that runs on the backend."""
    if asyncio and httptools_available():
        return "httptools"
    if asyncio and aiohttp_available():
        return "aiohttp"
    return "httpx"


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
    """A new transport of this name ("auto": `auto_name` for the running backend)."""
    if name == "auto":
        name = auto_name(asyncio=on_asyncio())
    if name == "httptools":
        from ._httptools import HttptoolsTransport

        return HttptoolsTransport(timeout=timeout, limits=limits, trust_env=trust_env)
    if name == "aiohttp":
        from ._aiohttp import AiohttpTransport

        return AiohttpTransport(timeout=timeout, limits=limits, trust_env=trust_env)
    from ._httpx import HttpxTransport

    return HttpxTransport.owned(
        timeout=timeout, limits=limits, trust_env=trust_env, extensions=extensions
    )


class AsyncioSlots:
    """`max_connections` as slots of the transport's own (asyncio transports).

    Held from before a connection is taken until its response is released; waiting longer
    than the pool timeout for one is `httpx.PoolTimeout`. The client below is unbounded, so it
    never queues a request where a cancellation could strand a slot.
    """

    __slots__ = ("_semaphore", "_timeout")

    def __init__(self, most: int, timeout: float | None) -> None:
        self._semaphore = asyncio.Semaphore(most)
        self._timeout = timeout

    async def acquire(self) -> None:
        semaphore = self._semaphore
        if not semaphore.locked():
            await semaphore.acquire()  # returns at once
            return
        acquiring = asyncio.get_running_loop().create_task(semaphore.acquire())
        if not await finished_within(acquiring, self._timeout, lambda _: semaphore.release()):
            raise httpx.PoolTimeout("no upstream connection was free in time")

    def release(self) -> None:
        self._semaphore.release()


_T = TypeVar("_T")


async def finished_within(
    task: asyncio.Task[_T], timeout: float | None, undo: Callable[[_T], object]
) -> bool:
    """Whether `task` finished within `timeout` seconds (None: no limit). When it did not, or
    the caller is cancelled meanwhile, `task` is cancelled, and `undo` is applied to its result
    should it complete all the same; a cancellation of the caller is raised.

    Not `asyncio.wait_for`: on Python 3.10 and 3.11, when the caller is cancelled just as the
    task completes, it returns the result and swallows the cancellation (cpython#86296).
    """
    try:
        await asyncio.wait((task,), timeout=timeout)
    except BaseException:  # the caller was cancelled
        _abandon(task, undo)
        raise
    if task.done():
        return True
    _abandon(task, undo)
    return False


def _abandon(task: asyncio.Task[_T], undo: Callable[[_T], object]) -> None:
    task.cancel()

    def undo_if_done(task: asyncio.Task[_T]) -> None:
        if not task.cancelled() and task.exception() is None:
            undo(task.result())

    task.add_done_callback(undo_if_done)


class ProxyLookup:
    """The `HTTP(S)_PROXY` for a URL, honouring `NO_PROXY`, looked up once per scheme and host.

    (urllib reads the environment on every call; a gateway sends to the same few hosts.)
    """

    __slots__ = ("_known",)

    def __init__(self) -> None:
        self._known: dict[tuple[str, str], str | None] = {}

    def __call__(self, url: httpx.URL) -> str | None:
        key = (url.scheme, url.host)
        try:
            return self._known[key]
        except KeyError:
            pass
        proxy = None
        if not urllib.request.proxy_bypass(url.host):
            proxy = urllib.request.getproxies().get(url.scheme)
        self._known[key] = proxy
        return proxy
