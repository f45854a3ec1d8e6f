"""`HttptoolsTransport`: `UpstreamProxy` over a small HTTP/1.1 client of its own, on asyncio.

Why a client of our own: in the gateway at one connection, aiohttp's request and response
machinery (request and payload objects, header multidicts, stream readers, timers, traces) was
about a third of the server's CPU per request, more than the middleware's rewrite and uvicorn
together (benchmarks/README.md). A proxy needs none of it: it sends bytes it already has to a
host it already knows and passes the answer on unread. So this transport writes the request
head itself, sends head and body in one write, and reads the answer with httptools' parser
(llhttp, the parser uvicorn's `httptools` protocol uses), on asyncio's protocol callbacks.

What it does, as the other transports: HTTP/1.1 keep-alive pooling per origin (`keepalive_expiry`,
`max_keepalive_connections`), `max_connections` as slots of its own (`AsyncioSlots`), TLS with the
certificates httpx would trust (`httpx.create_ssl_context`, `SSL_CERT_FILE` with `trust_env`),
connect/read/write/pool timeouts raised as httpx's exceptions, bodies streamed both ways with flow
control, raw bodies (never decompressed), no cookies, no redirects, no headers of its own but
`host` and the body's framing. A request that an `HTTP(S)_PROXY` applies to goes through aiohttp
(or httpx), which speak to proxies; this client only talks to the upstream itself.

A connection whose answer was not read to its end, or that the server closes or marks
`Connection: close`, is closed, never reused. Nothing is retried: a request that failed may have
reached the upstream.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Mapping
from typing import cast

import httptools
import httpx

from ._transport import (
    AsyncioSlots,
    Headers,
    ProxyLookup,
    Transport,
    UpstreamResponse,
    aiohttp_available,
    choose,
    finished_within,
)

__all__ = ["HttptoolsTransport"]

# Body bytes held unread before the socket stops being read (and the upstream is slowed down).
_HIGH_WATER = 256 * 1024
_Origin = tuple[str, str, int]


class HttptoolsTransport:
    name = "httptools"
    asyncio_only = True

    def __init__(self, *, timeout: httpx.Timeout, limits: httpx.Limits, trust_env: bool) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._trust_env = trust_env
        most = limits.max_connections
        self._slots = AsyncioSlots(most, timeout.pool) if most else None
        self._keep_most = limits.max_keepalive_connections
        self._keepalive = limits.keepalive_expiry
        self._limits = limits
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._ssl: ssl.SSLContext | None = None
        self._proxy_for = ProxyLookup() if trust_env else None
        self._via_proxy: Transport | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def usable(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop and not self._closed
        except RuntimeError:  # not on asyncio (trio)
            return False

    async def send(
        self, method: str, url: httpx.URL, headers: Headers, content: bytes | AsyncIterable[bytes]
    ) -> UpstreamResponse:
        if self._proxy_for is not None and self._proxy_for(url) is not None:
            return await self._proxied().send(method, url, headers, content)
        head = _request_head(method, url, headers, content)  # refused before any connection
        head_only = method == "HEAD"
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        slots = self._slots
        if slots is not None:
            await slots.acquire()
        connection: _Connection | None = None
        try:
            connection = self._idle_connection(origin) or await self._connect(origin)
            if isinstance(content, bytes):
                await connection.request(head + content, head_only)
            else:
                await connection.request(head, head_only)
                await connection.stream_body(content, framed=_has_length(headers))
            await connection.response_head()
        except BaseException:
            if connection is not None:
                connection.close()
            if slots is not None:
                slots.release()
            raise
        return _Response(self, origin, connection, slots)

    def _proxied(self) -> Transport:
        """The client for requests an `HTTP(S)_PROXY` applies to: aiohttp, else httpx."""
        if self._via_proxy is None:
            self._via_proxy = choose(
                "aiohttp" if aiohttp_available() else "httpx",
                timeout=self._timeout,
                limits=self._limits,
                trust_env=True,
                extensions={"timeout": self._timeout.as_dict()},
            )
        return self._via_proxy

    def _idle_connection(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = self._loop.time()
        while idle:
            connection = idle.pop()
            if connection.reusable(now, self._keepalive):
                return connection
            connection.close()
        return None

    async def _connect(self, origin: _Origin) -> _Connection:
        scheme, host, port = origin
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context(trust_env=self._trust_env)
            context = self._ssl
        timeout = self._timeout
        connecting = self._loop.create_task(
            self._loop.create_connection(
                lambda: _Connection(self._loop, timeout),
                host,
                port,
                ssl=context,
                server_hostname=host if context is not None else None,
            )
        )
        if not await finished_within(connecting, timeout.connect, _close_made):
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out")
        try:
            _, connection = connecting.result()
        except OSError as exc:  # ssl.SSLError included
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from None
        return connection

    def release(self, origin: _Origin, connection: _Connection) -> None:
        """Keep a connection whose answer was read to its end, or close it."""
        if not connection.end_exchange() or self._closed:
            connection.close()
            return
        idle = self._idle.setdefault(origin, [])
        if self._keep_most is not None and len(idle) >= self._keep_most:
            connection.close()
            return
        connection.idle_since = self._loop.time()
        idle.append(connection)
        if self._sweep is None and self._keepalive is not None:
            self._sweep = self._loop.call_later(self._keepalive, self._close_expired)

    def _close_expired(self) -> None:
        """Close connections idle beyond `keepalive_expiry` (one timer, while any are idle)."""
        self._sweep = None
        now = self._loop.time()
        for idle in self._idle.values():
            for connection in idle:
                if not connection.reusable(now, self._keepalive):
                    connection.close()
            idle[:] = [connection for connection in idle if not connection.lost]
        if any(self._idle.values()) and self._keepalive is not None:
            self._sweep = self._loop.call_later(self._keepalive, self._close_expired)

    async def aclose(self) -> None:
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
        if self._via_proxy is not None:
            await self._via_proxy.aclose()


def _request_head(
    method: str, url: httpx.URL, headers: Headers, content: bytes | AsyncIterable[bytes]
) -> bytes:
    lines = [method.encode("ascii"), b" ", url.raw_path, b" HTTP/1.1\r\nhost: ", url.netloc]
    for name, value in headers:
        lines += (b"\r\n", name, b": ", value)
    breaks = 3 + len(headers)  # after the request line, each header line and the blank line
    if isinstance(content, bytes):
        if content:  # b"": no body, and no content-length (as httpx)
            lines += (b"\r\ncontent-length: ", b"%d" % len(content))
            breaks += 1
    elif not _has_length(headers):
        lines.append(b"\r\ntransfer-encoding: chunked")
        breaks += 1
    lines.append(b"\r\n\r\n")
    head = b"".join(lines)
    # One count over the head rather than a test per header: a line break inside a name or a
    # value would add a header (or a request) of the sender's own.
    if head.count(b"\n") != breaks or head.count(b"\r") != breaks:
        raise httpx.LocalProtocolError("a request header has a line break in it")
    return head


def _has_length(headers: Headers) -> bool:
    return any(name == b"content-length" for name, _ in headers)


def _close_made(made: tuple[asyncio.BaseTransport, _Connection]) -> None:
    made[0].close()


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection to the upstream and the exchange under way on it, if any."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: httpx.Timeout) -> None:
        self._loop = loop
        self._read_timeout = timeout.read
        self._write_timeout = timeout.write
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.idle_since = 0.0
        self._lost = False
        self._writable = True
        self._drained: asyncio.Future[None] | None = None
        # The exchange under way.
        self._busy = False
        self._head_only = False
        self._informational = False
        self._head_done = False
        self.status = 0
        self.raw_headers: Headers = []
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._reading_paused = False
        self._complete = False
        self._keep_alive = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._waiting_since = 0.0
        self._read_timer: asyncio.TimerHandle | None = None

    # The exchange, as the transport drives it.

    async def request(self, data: bytes, head_only: bool) -> None:
        """Start an exchange: write the request's head (and its body when it is `data`'s)."""
        self._busy = True
        self._head_only = head_only
        self._informational = self._head_done = self._complete = self._keep_alive = False
        self.status = 0
        self.raw_headers = []
        self._error = None
        await self._write(data)

    async def stream_body(self, body: AsyncIterable[bytes], *, framed: bool) -> None:
        """Write a streamed body: as is when its length was announced, else chunked."""
        async for chunk in body:
            if not chunk:
                continue
            await self._write(chunk if framed else b"%x\r\n%b\r\n" % (len(chunk), chunk))
        if not framed:
            await self._write(b"0\r\n\r\n")

    async def response_head(self) -> None:
        while not self._head_done:
            await self.arrival()

    def take(self) -> bytes | None:
        """The body bytes that have arrived; b"" at the body's end; None: wait for `arrival()`."""
        body = self._body
        if body:
            data = body.popleft() if len(body) == 1 else b"".join(body)
            body.clear()
            self._buffered = 0
            if self._reading_paused:
                self._reading_paused = False
                if self._transport is not None and not self._lost:
                    self._transport.resume_reading()
            return data
        if self._complete:
            return b""
        return None

    def arrival(self) -> asyncio.Future[None]:
        """A future that is done when more of the answer has arrived, or failed with the reason
        none will (a `ReadTimeout` after `read` seconds)."""
        waiter = self._waiter = self._loop.create_future()
        if self._error is not None:
            waiter.set_exception(self._error)
        elif self._read_timeout is not None:
            # One timer per connection, moved on when it fires, rather than one per wait
            # (every SSE event is a wait).
            self._waiting_since = self._loop.time()
            if self._read_timer is None:
                due = self._waiting_since + self._read_timeout
                self._read_timer = self._loop.call_at(due, self._check_read)
        return waiter

    def _check_read(self) -> None:
        self._read_timer = None
        waiter = self._waiter
        if waiter is None or waiter.done() or self._read_timeout is None:
            return  # not waiting: the next wait sets a timer again
        due = self._waiting_since + self._read_timeout
        if self._loop.time() >= due:
            waiter.set_exception(httpx.ReadTimeout("the upstream timed out"))
        else:
            self._read_timer = self._loop.call_at(due, self._check_read)

    def end_exchange(self) -> bool:
        """End the exchange: whether its answer was read to its end and the connection may
        carry another one."""
        self._busy = False
        return self._complete and self._keep_alive and not self._lost and not self._body

    @property
    def lost(self) -> bool:
        return self._lost

    def reusable(self, now: float, keepalive: float | None) -> bool:
        return not self._lost and (keepalive is None or now - self.idle_since < keepalive)

    def close(self) -> None:
        """Close the connection at once (the upstream stops sending)."""
        self._lost = True
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        if self._transport is not None:
            self._transport.abort()

    async def _write(self, data: bytes) -> None:
        if self._lost or self._transport is None:
            raise self._error or httpx.WriteError("the upstream closed the connection")
        self._transport.write(data)
        if not self._writable:
            drained = self._drained = self._loop.create_future()
            seconds = self._write_timeout
            timer = None if seconds is None else self._loop.call_later(seconds, _stalled, drained)
            try:
                await drained
            finally:
                if timer is not None:
                    timer.cancel()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        for future in (self._waiter, self._drained):
            if future is not None and not future.done():
                future.set_exception(self._error)

    # asyncio's protocol callbacks.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._busy or self._complete:
            # Bytes nobody asked for: the connection's state is unknown, so it is not reused.
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("the upstream switched protocols"))
            self.close()
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"the upstream's answer is not HTTP/1.1: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        self._ended(None)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(exc)

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    def _ended(self, exc: Exception | None) -> None:
        self._lost = True
        if not self._busy or self._complete:
            return
        if self._head_done and not self._framed():
            # A body that runs until the connection closes (no length, not chunked) ends here.
            self._complete = True
            self._wake()
        elif exc is not None:
            self._fail(httpx.ReadError(f"the upstream connection failed: {exc}"))
        else:
            where = "mid-answer" if self._head_done else "without an answer"
            self._fail(httpx.RemoteProtocolError(f"the upstream disconnected {where}"))

    def _framed(self) -> bool:
        return any(
            name.lower() in (b"content-length", b"transfer-encoding")
            for name, _ in self.raw_headers
        )

    # httptools' parser callbacks.

    def on_message_begin(self) -> None:
        if self._complete:  # a second answer to one request: the connection is out of step
            self._keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._complete:  # trailers, or bytes after the answer: nothing to pass on
            return
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._complete:
            self._keep_alive = False
            return
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue and friends: the answer is still to come
            self._informational = True
            self.raw_headers = []
            return
        self.status = status
        self._head_done = True
        if self._head_only:  # the answer to HEAD has no body, whatever its length says
            self._complete = True
            self._keep_alive = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._complete:
            return
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            if self._transport is not None:
                self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self._complete:  # HEAD's answer (complete with its head), or a second answer
            self._keep_alive = False
            return
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()
        self._wake()


def _stalled(drained: asyncio.Future[None]) -> None:
    if not drained.done():
        drained.set_exception(httpx.WriteTimeout("the upstream timed out"))


class _Response:
    __slots__ = (
        "_connection",
        "_headers",
        "_origin",
        "_slots",
        "_transport",
        "raw_headers",
        "status",
    )

    def __init__(
        self,
        transport: HttptoolsTransport,
        origin: _Origin,
        connection: _Connection,
        slots: AsyncioSlots | None,
    ) -> None:
        self._transport = transport
        self._origin = origin
        self._connection: _Connection | None = connection
        self._slots = slots
        self.status = connection.status
        self.raw_headers = connection.raw_headers
        self._headers: _HeaderView | None = None

    @property
    def headers(self) -> Mapping[str, str]:
        if self._headers is None:
            self._headers = _HeaderView(self.raw_headers)
        return self._headers

    def chunks(self) -> AsyncIterator[bytes]:
        return self

    def __aiter__(self) -> _Response:
        return self

    async def __anext__(self) -> bytes:
        connection = self._connection
        if connection is None:
            raise StopAsyncIteration
        data = connection.take()
        while data is None:
            await connection.arrival()
            data = connection.take()
        if not data:
            raise StopAsyncIteration
        return data

    async def aclose(self, *, complete: bool) -> None:
        connection, self._connection = self._connection, None
        slots, self._slots = self._slots, None
        try:
            if connection is not None:
                if complete:
                    self._transport.release(self._origin, connection)
                else:
                    connection.close()  # the upstream stops sending (and generating)
        finally:
            if slots is not None:
                slots.release()


class _HeaderView(Mapping[str, str]):
    """Case-insensitive, read-only view of raw headers; repeated ones joined with ", "."""

    __slots__ = ("_by_name", "_raw")

    def __init__(self, raw: Headers) -> None:
        self._raw = raw
        self._by_name: dict[str, str] | None = None

    def _names(self) -> dict[str, str]:
        if self._by_name is None:
            by_name: dict[str, str] = {}
            for name, value in self._raw:
                key = name.decode("latin-1").lower()
                text = value.decode("latin-1")
                by_name[key] = f"{by_name[key]}, {text}" if key in by_name else text
            self._by_name = by_name
        return self._by_name

    def __getitem__(self, name: str) -> str:
        return self._names()[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return f"_HeaderView({self._names()!r})"
