"""`HttpxTransport`: `UpstreamProxy` over httpx, on any anyio backend (asyncio or trio).

A proxy cancels sends from outside: the disconnect watcher cancels the exchange when its client
hangs up, whatever the exchange is doing. httpcore's pool loses a connection slot to a request
cancelled after the pool handed it a new connection but before it used it (encode/httpcore#1093,
#830): the connection stays in the pool, "connecting" forever, and counts against
`max_connections`. A burst of such hang-ups under pool contention fills the pool with them and
every later request waits for the pool timeout, until a restart.

So for the proxy's own client, the limit is kept here instead, and httpcore's pool is unbounded:

* an anyio semaphore of `max_connections` slots, held from before the send until the response
  is closed, is the pool timeout (`httpx.PoolTimeout` → 503): requests never queue inside
  httpcore, where the leak happens under contention, and a slot here is returned by
  `finally`, cancelled or not;
* a stranded connection then blocks nothing (it has no socket, only a place in httpcore's list);
  after `_RENEW_AFTER` sends cancelled before their response, the client is replaced by a fresh
  one, and the old one is closed once its last response is.

A caller's own `client=` is used as given: its limits and pool are its owner's.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import anyio
import httpx

from ._transport import Headers, UpstreamResponse

__all__ = ["HttpxTransport"]

# Sends cancelled before their response after which the client is renewed. Each may have left
# one stranded connection in httpcore's list, which every later request walks.
_RENEW_AFTER = 64


class _Client:
    """One owned `httpx.AsyncClient` and the exchanges still using it."""

    __slots__ = ("active", "client", "retired")

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.active = 0
        self.retired = False


class HttpxTransport:
    """Sends with an `httpx.AsyncClient`: the proxy's own (`owned()`), or a caller's."""

    name = "httpx"
    asyncio_only = False

    def __init__(
        self,
        client: httpx.AsyncClient,
        extensions: dict[str, Any],
        *,
        limits: httpx.Limits | None = None,
        timeout: httpx.Timeout | None = None,
        trust_env: bool = True,
    ) -> None:
        self._current = _Client(client)
        self._extensions = extensions
        self._owned = limits is not None
        self._limits = limits
        self._timeout = timeout
        self._trust_env = trust_env
        most = limits.max_connections if limits is not None else None
        self._slots = anyio.Semaphore(most) if most else None
        self._pool_timeout = timeout.pool if timeout is not None else None
        self._cancelled_sends = 0

    @classmethod
    def owned(
        cls,
        *,
        timeout: httpx.Timeout,
        limits: httpx.Limits,
        trust_env: bool,
        extensions: dict[str, Any],
    ) -> HttpxTransport:
        return cls(
            _new_client(timeout, limits, trust_env),
            extensions,
            limits=limits,
            timeout=timeout,
            trust_env=trust_env,
        )

    @property
    def client(self) -> httpx.AsyncClient:
        return self._current.client

    @property
    def closed(self) -> bool:
        return self._current.client.is_closed

    def usable(self) -> bool:
        return True

    async def send(
        self, method: str, url: httpx.URL, headers: Headers, content: bytes | AsyncIterable[bytes]
    ) -> UpstreamResponse:
        # A Request built here rather than client.build_request: the latter would merge the
        # client's cookie jar into it.
        request = httpx.Request(
            method, url, headers=headers, content=content, extensions=self._extensions
        )
        if not self._owned:
            return _HttpxResponse(await self._current.client.send(request, stream=True), None)
        slots = self._slots
        if slots is not None:
            await self._acquire(slots)
        if self._cancelled_sends >= _RENEW_AFTER:
            await self._renew()
        held = self._current
        held.active += 1
        try:
            response = await held.client.send(request, stream=True)
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                self._cancelled_sends += 1
            with anyio.CancelScope(shield=True):
                await self._release(held, slots)
            raise

        async def release() -> None:
            await self._release(held, slots)

        return _HttpxResponse(response, release)

    async def _acquire(self, slots: anyio.Semaphore) -> None:
        try:
            slots.acquire_nowait()
        except anyio.WouldBlock:
            with anyio.move_on_after(self._pool_timeout) as waited:
                await slots.acquire()
            if waited.cancelled_caught:
                raise httpx.PoolTimeout("no upstream connection was free in time") from None

    async def _release(self, held: _Client, slots: anyio.Semaphore | None) -> None:
        if slots is not None:
            slots.release()
        held.active -= 1
        if held.retired and held.active == 0:
            await held.client.aclose()

    async def _renew(self) -> None:
        assert self._limits is not None
        assert self._timeout is not None
        old = self._current
        self._current = _Client(_new_client(self._timeout, self._limits, self._trust_env))
        self._cancelled_sends = 0
        old.retired = True
        if old.active == 0:
            await old.client.aclose()

    async def aclose(self) -> None:
        if self._owned:
            self._current.retired = True
            await self._current.client.aclose()


def _new_client(timeout: httpx.Timeout, limits: httpx.Limits, trust_env: bool) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=timeout,
        # Unbounded in httpcore, bounded by HttpxTransport's slots: see the module docstring.
        limits=httpx.Limits(
            max_connections=None,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
        ),
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        follow_redirects=False,
        trust_env=trust_env,
    )


class _HttpxResponse:
    __slots__ = ("_release", "_response", "headers", "raw_headers", "status")

    def __init__(
        self, response: httpx.Response, release: Callable[[], Awaitable[None]] | None
    ) -> None:
        self._response = response
        self._release = release
        self.status = response.status_code
        self.raw_headers: Headers = response.headers.raw
        self.headers: Mapping[str, str] = response.headers

    def chunks(self) -> AsyncIterator[bytes]:
        response = self._response
        if response.is_stream_consumed and isinstance(response.stream, httpx.AsyncByteStream):
            # Built from bytes (httpx.MockTransport, respx) and so read on creation; the raw
            # bytes are still in its stream.
            return aiter(response.stream)
        return response.aiter_raw()

    async def aclose(self, *, complete: bool) -> None:
        release, self._release = self._release, None
        try:
            await self._response.aclose()
        finally:
            if release is not None:
                await release()
