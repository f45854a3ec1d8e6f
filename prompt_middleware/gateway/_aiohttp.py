"""`AiohttpTransport`: `UpstreamProxy` over aiohttp, for a proxy running on asyncio.

Imported only when aiohttp is installed and the running backend is asyncio (`_transport.choose`).
The proxy's guarantees hold as with httpx: no cookie jar (`DummyCookieJar`), no redirects, bodies
passed on raw (`auto_decompress=False`), no headers of the client's own invention (no
`User-Agent`, `Accept`, `Accept-Encoding` or `Content-Type` added), `HTTP(S)_PROXY`/`NO_PROXY`
honoured with `trust_env`, and aiohttp's errors raised as the `httpx` exception the same failure
raises there.

Timeouts are aiohttp's own (`sock_connect`, `sock_read`), never a cancellation from outside the
client. The pool timeout is ours: an `asyncio.Semaphore` of `max_connections` slots, held from
before the connection is taken until the response is released; the connector itself is
unbounded, so it never queues a request where a cancellation could strand a slot. aiohttp has no
write timeout: a stalled upload is bounded by the read timeout, which runs while the request is
written (aiohttp writes the body and waits for the response head at the same time).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Mapping

import aiohttp
import httpx
from multidict import CIMultiDict
from yarl import URL

from ._transport import AsyncioSlots, Headers, ProxyLookup, UpstreamResponse

__all__ = ["AiohttpTransport"]

# aiohttp adds these unless told not to; httpx (with a Request built by hand) adds none of them,
# and a proxy should forward what its client sent, not its own defaults.
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


class AiohttpTransport:
    name = "aiohttp"
    asyncio_only = True

    def __init__(self, *, timeout: httpx.Timeout, limits: httpx.Limits, trust_env: bool) -> None:
        self._loop = asyncio.get_running_loop()
        keepalive = limits.keepalive_expiry
        connector = aiohttp.TCPConnector(
            limit=0,  # bounded by self._slots instead; see the module docstring
            limit_per_host=0,
            keepalive_timeout=30.0 if keepalive is None else keepalive,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            # aiohttp's own trust_env looks the proxy and ~/.netrc up in a worker thread on every
            # request (two thread hops, a quarter of the CPU a request costs); the proxy is
            # looked up here once per upstream host instead, and netrc not at all, as httpx.
            trust_env=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=timeout.connect, sock_read=timeout.read
            ),
        )
        most = limits.max_connections
        self._slots = AsyncioSlots(most, timeout.pool) if most else None
        # aiohttp's own trust_env is off (above); the proxy is looked up here instead.
        self._proxy_for = ProxyLookup() if trust_env else None

    @property
    def closed(self) -> bool:
        return self._session.closed

    def usable(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop and not self._session.closed
        except RuntimeError:  # not on asyncio (trio)
            return False

    async def send(
        self, method: str, url: httpx.URL, headers: Headers, content: bytes | AsyncIterable[bytes]
    ) -> UpstreamResponse:
        slots = self._slots
        if slots is not None:
            await slots.acquire()
        proxy_for = self._proxy_for
        try:
            response = await self._session.request(
                method,
                # encoded=True: the target is already percent-encoded as the client sent it.
                URL(str(url), encoded=True),
                headers=CIMultiDict(
                    [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]
                ),
                data=content or None,  # b"": no body, and no content-length: 0 (as httpx)
                allow_redirects=False,
                proxy=None if proxy_for is None else proxy_for(url),
            )
        except BaseException as exc:
            if slots is not None:
                slots.release()
            if isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError)):
                raise _translate(exc) from exc
            raise
        return _AiohttpResponse(response, slots)

    async def aclose(self) -> None:
        await self._session.close()


class _AiohttpResponse:
    __slots__ = ("_content", "_response", "_slots", "headers", "raw_headers", "status")

    def __init__(self, response: aiohttp.ClientResponse, slots: AsyncioSlots | None) -> None:
        self._response = response
        self._content = response.content
        self._slots = slots
        self.status = response.status
        self.raw_headers: Headers = list(response.raw_headers)
        self.headers: Mapping[str, str] = response.headers

    def chunks(self) -> AsyncIterator[bytes]:
        return self

    def __aiter__(self) -> _AiohttpResponse:
        return self

    async def __anext__(self) -> bytes:
        try:
            data = await self._content.readany()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise _translate(exc) from exc
        if not data:
            raise StopAsyncIteration
        return data

    async def aclose(self, *, complete: bool) -> None:
        slots, self._slots = self._slots, None
        try:
            if complete:
                self._response.release()  # keeps the connection for the next request
            else:
                self._response.close()  # the upstream stops sending (and generating)
        finally:
            if slots is not None:
                slots.release()


def _translate(exc: BaseException) -> httpx.TransportError:
    """The httpx exception for the same failure, so that it maps to the same answer."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(exc, asyncio.TimeoutError):  # SocketTimeoutError: sock_read
        return httpx.ReadTimeout(message)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
        return httpx.RemoteProtocolError(message)
    if isinstance(exc, aiohttp.ClientResponseError):  # an answer that is not valid HTTP
        return httpx.RemoteProtocolError(message)
    if isinstance(exc, OSError):
        return httpx.ReadError(message)
    return httpx.RemoteProtocolError(message)
