"""`UpstreamProxy`: an ASGI app that forwards requests to an OpenAI-compatible server.

It is the app behind `PromptMiddleware` in a standalone gateway (`prompt-middleware serve`), and
works on its own as a small reverse proxy on asyncio or trio.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote, unquote

import anyio
import httpx
from starlette.types import Message, Receive, Scope, Send

from .. import observability
from .._asgi import send_json
from ..core.errors import error_body
from ._httpx import HttpxTransport
from ._logsafe import redact_httpx_log
from ._target import InvalidTarget, split_credentials, upstream_url, without_userinfo
from ._transport import Transport, TransportName, UpstreamResponse, choose

__all__ = ["DEFAULT_LIMITS", "DEFAULT_TIMEOUT", "UpstreamProxy"]

logger = logging.getLogger("prompt_middleware.upstream")

DEFAULT_TIMEOUT: Final = httpx.Timeout(connect=10.0, read=600.0, write=30.0, pool=5.0)
"""Connect 10 s; read 600 s between bytes (a model may think for minutes before its first token);
write 30 s; 5 s waiting for a free pooled connection."""

DEFAULT_LIMITS: Final = httpx.Limits(
    max_connections=256, max_keepalive_connections=64, keepalive_expiry=30.0
)
"""Every streaming completion holds a connection for its whole generation, hence the headroom."""

_HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# httpx sets `host` and `content-length` for the upstream; `expect` is for the server in front.
_REQUEST_ONLY: Final = frozenset({b"host", b"content-length", b"expect"})
# The ASGI server in front adds its own `date` and `server`; forwarding them would duplicate them.
_RESPONSE_ONLY: Final = frozenset({b"date", b"server"})
_EVENT_ENDS: Final = (b"\n\n", b"\r\r", b"\r\n\r\n")
_PATH_SAFE: Final = "/:@!$&'()*+,;=~"
_INVALID: Final = "invalid_request_error"
_BAD_TARGET: Final = "invalid_request_target"
_TARGETS_KEPT: Final = 256  # request targets whose upstream URL is kept, per proxy


class _UseDefault:
    def __repr__(self) -> str:
        return "DEFAULT_TIMEOUT"


_USE_DEFAULT: Final = _UseDefault()


class _ClientGone(Exception):
    """The client disconnected: there is nobody left to answer."""


@dataclass(frozen=True, slots=True)
class _Failure:
    status: int
    code: str
    message: str


class UpstreamProxy:
    """Forward every HTTP request to `base_url`, streaming both ways.

    * **URL.** The request path is joined under the base URL's path: with base
      `https://api.openai.com/v1`, `/chat/completions` goes to `/v1/chat/completions`. A path that
      already is the base path or starts with it and a `/`, compared as sent (percent-encoding
      included), is forwarded as is, not doubled: `/v1/chat/completions` (what OpenAI clients
      pointed at `http://gateway/v1` send) goes to `/v1/chat/completions`, and `/v1/v1/x` to
      `/v1/v1/x`, so every upstream path under the base is reachable by its own name. The query
      string is kept. When the proxy is mounted under a prefix (`scope["root_path"]`), the prefix
      is not forwarded.
    * **Staying under the base path.** Nothing reaches the upstream outside its base path, which
      is what the upstream key is scoped to: a path with a `.` or `..` segment, raw or in any
      spelling an upstream could decode into one (`%2e%2e`, `%252e`, `..%2F`, `..\\`, `..;`),
      is refused with a 400 `invalid_request_target`, as is a target with a fragment (`#`) or
      with bytes a URL cannot carry. Nothing is sent upstream for them.
    * **Credentials in the base URL.** `https://user:pass@host/v1` is sent as
      `Authorization: Basic …` (as httpx would), unless `headers=` sets `Authorization`, which then
      wins. The userinfo is taken out of the URL at construction, so it is in no URL httpx sees,
      logs or puts in an error, and not in `base_url` or the `repr`.
    * **Logs.** The proxy logs the method and path, never the query. httpx logs each request's URL
      at INFO; the proxy adds a filter to the `httpx` logger that replaces query values with `***`
      (a client's `?key=` stays out of the log; names stay, to show what was sent).
    * **Headers.** Forwarded as sent, `Authorization` included, minus hop-by-hop headers
      (`connection` and the headers it names, `keep-alive`, `te`, `trailer`, `transfer-encoding`,
      `upgrade`, `proxy-*`) and `host`/`content-length`/`expect`, which httpx sets for the upstream.
      `headers=` adds or replaces headers on every request, e.g. an upstream key kept server-side:
      `headers={"Authorization": "Bearer sk-..."}`. Cookies are forwarded per request, never stored.
    * **Bodies.** A body that arrives in one piece (e.g. rewritten by `PromptMiddleware`) is sent
      with its length; a streamed one is streamed on, with the client's `content-length` when it
      sent one (else chunked). The response is streamed back as it arrives, raw: compressed bodies
      are not decoded, SSE reaches the client event by event.
    * **Errors.** Before the response has started: cannot connect or a bad upstream answer → 502
      `upstream_unavailable`; connect/read/write timeout → 504 `upstream_timeout`; no free pooled
      connection within the pool timeout → 503 `upstream_busy` with `Retry-After`; all with an
      OpenAI-shaped JSON body. Upstream error statuses pass through unchanged. After the response
      has started, an SSE stream ends with a final `data: {"error": ...}` event (which the openai
      client raises as `APIError`); any other body is aborted so the client sees a broken
      response, not a short one.
    * **Disconnects.** When the client goes away, the upstream response is closed at once, so a
      model stops generating (and billing) for nobody.
    * **Client.** One pooled HTTP client per proxy, created on first use with `DEFAULT_LIMITS`,
      no cookie storage, no redirect following, `trust_env` as given (so `HTTPS_PROXY` works
      for egress). `transport="auto"` (the default) picks, on asyncio, the proxy's own HTTP/1.1
      client when httptools is installed (part of the `server` extra), else aiohttp when
      installed, else httpx; on trio, httpx. `"httpx"`, `"aiohttp"` or `"httptools"` forces
      one. All behave alike and map failures alike; the httptools client costs the least CPU
      per request and httpx the most (docs/performance.md). The httptools client speaks only to
      the upstream itself: a request an `HTTP(S)_PROXY` applies to is sent with aiohttp (or
      httpx). `max_connections` is enforced by the proxy itself (the pool timeout is waiting
      for one of its slots), so a burst of cancelled requests cannot strand httpcore's pool
      slots. The client is closed by `aclose()` or on ASGI lifespan shutdown; a later request
      opens a new one. Mounted inside another app, which may not pass lifespan on, close it
      from that app's lifespan. A `client=` you pass (an `httpx.AsyncClient`) is used as is
      (its `headers`, limits and pool are its own: use `headers=`) and never closed by the
      proxy.
    * **Timeouts.** `timeout` is an `httpx.Timeout`, or a number (or None for no limit) that sets
      the read timeout and keeps `DEFAULT_TIMEOUT`'s connect/write/pool values. Left at the
      default with your own `client=`, that client's timeout applies. aiohttp enforces the
      connect and read timeouts; it has no write timeout (a stalled upload is bounded by the
      read timeout, which runs while the body is written); httpx and the httptools client
      enforce all four.
    """

    def __init__(
        self,
        base_url: str | httpx.URL,
        *,
        client: httpx.AsyncClient | None = None,
        timeout: httpx.Timeout | float | _UseDefault | None = _USE_DEFAULT,
        headers: Mapping[str, str] | None = None,
        limits: httpx.Limits = DEFAULT_LIMITS,
        trust_env: bool = True,
        transport: TransportName = "auto",
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            shown = without_userinfo(str(base_url))
            raise ValueError(f"base_url must be an absolute http(s) URL, got {shown!r}")
        if url.query or url.fragment:
            raise ValueError("base_url must not have a query string or fragment")
        url, basic = split_credentials(url, headers)
        self._base_url = url
        self._base_raw_path = url.raw_path.decode("ascii").rstrip("/")
        if transport not in ("auto", "httpx", "aiohttp", "httptools"):
            raise ValueError(
                f"transport must be auto, httpx, aiohttp or httptools, got {transport!r}"
            )
        if client is not None and transport not in ("auto", "httpx"):
            raise ValueError("client= is an httpx.AsyncClient: it needs transport='httpx'")
        self._client = client
        self._transport: Transport | None = None
        self._transport_name: TransportName = transport
        self._limits = limits
        self._trust_env = trust_env
        if isinstance(timeout, _UseDefault):
            self._timeout = DEFAULT_TIMEOUT
            # A caller's own client keeps its own timeout unless one was asked for explicitly.
            self._extensions = {} if client is not None else {"timeout": self._timeout.as_dict()}
        else:
            self._timeout = _as_timeout(timeout)
            self._extensions = {"timeout": self._timeout.as_dict()}
        self._extra_headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in (headers or {}).items()
        ]
        if basic is not None:
            self._extra_headers.append(basic)
        self._extra_names = frozenset(name for name, _ in self._extra_headers)
        self._targets: dict[tuple[Any, ...], httpx.URL] = {}
        redact_httpx_log()

    @property
    def base_url(self) -> httpx.URL:
        return self._base_url

    def __repr__(self) -> str:
        return f"UpstreamProxy({str(self._base_url)!r})"

    async def aclose(self) -> None:
        """Close the proxy's own client (not one passed as `client=`)."""
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.aclose()

    async def __aenter__(self) -> UpstreamProxy:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                url = self._cached_target(scope)
            except InvalidTarget as exc:
                await send_json(send, 400, error_body(str(exc), _INVALID, None, _BAD_TARGET))
                return
            await self._proxy(scope, receive, send, url)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.close", "code": 1000})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _cached_target(self, scope: Scope) -> httpx.URL:
        # Building an httpx.URL parses and validates it again (~30 µs, a tenth of a proxied
        # request's CPU); a gateway sends nearly every request to the same few targets.
        key = (
            scope["path"],
            scope.get("raw_path"),
            scope.get("root_path", ""),
            scope.get("query_string", b""),
        )
        target = self._targets.get(key)
        if target is None:
            target = self._target_url(scope)
            if len(self._targets) >= _TARGETS_KEPT:
                self._targets.clear()
            self._targets[key] = target
        return target

    def _get_transport(self) -> Transport:
        transport = self._transport
        if transport is None or not transport.usable():
            if transport is not None:
                # An asyncio client belongs to the event loop that made it; this one is gone
                # or another backend runs now. Its connections went with its loop.
                logger.debug("upstream client of another event loop dropped")
            if self._client is not None:
                transport = HttpxTransport(self._client, self._extensions)
            else:
                transport = choose(
                    self._transport_name,
                    timeout=self._timeout,
                    limits=self._limits,
                    trust_env=self._trust_env,
                    extensions=self._extensions,
                )
            self._transport = transport
        return transport

    async def _proxy(self, scope: Scope, receive: Receive, send: Send, url: httpx.URL) -> None:
        first = await receive()
        if first["type"] == "http.disconnect":
            return
        headers, content_length = self._request_headers(scope)
        body_read = anyio.Event()
        content: bytes | _RequestBody
        if first.get("more_body", False):
            content = _RequestBody(first.get("body", b""), receive, body_read)
            if content_length is not None:
                headers.append((b"content-length", content_length))
        else:
            content = first.get("body", b"")
            body_read.set()
        call = None
        if observability.active is not None:
            call = observability.active.upstream(self, scope, _bytes_or_none(content))
            content = content if call.body is None else call.body
            call.prepare(headers)
        request = _Request(scope["method"], url, headers, content)
        exchange = _Exchange(send, call)
        transport = self._get_transport()
        forward = self._forward(transport, request, exchange, body_read)
        run = _run_on_asyncio if transport.asyncio_only else _run_on_anyio
        await run(forward, receive, body_read, exchange)
        if call is not None:
            call.end(exchange.error or exchange.broken)
        if exchange.disconnected:
            logger.info("client disconnected, upstream %s %s closed", request.method, request.path)
        if exchange.broken is not None:
            # Raising makes the ASGI server abort the connection: the only way to tell an HTTP
            # client that a body already under way is incomplete.
            raise exchange.broken

    async def _forward(
        self,
        transport: Transport,
        request: _Request,
        exchange: _Exchange,
        body_read: anyio.Event,
    ) -> None:
        response: UpstreamResponse | None = None
        complete = False
        try:
            try:
                response = await transport.send(
                    request.method, request.url, request.headers, request.content
                )
            except httpx.TransportError as exc:
                content = request.content
                if isinstance(content, _RequestBody) and content.client_gone:
                    # aiohttp reports the body that stopped coming as its own failure.
                    raise _ClientGone from exc
                exchange.error = exc
                _log_failure(request, exc, started=False)
                await exchange.send_error(_failure(exc))
                return
            # Whatever the client did not send of the body is no longer wanted; from here on
            # any `receive()` belongs to the disconnect watcher.
            body_read.set()
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("%s %s -> %d", request.method, request.path, response.status)
            await exchange.start(response)
            try:
                await exchange.pump(response)
                complete = True
            except httpx.TransportError as exc:
                exchange.error = exc
                _log_failure(request, exc, started=True)
                await exchange.end_broken(exc)
        except _ClientGone:
            exchange.disconnected = True
        finally:
            if response is not None:
                if transport.asyncio_only:
                    # An asyncio client gives the connection back without awaiting: nothing
                    # to shield.
                    await response.aclose(complete=complete)
                else:
                    with anyio.CancelScope(shield=True):
                        await response.aclose(complete=complete)

    def _target_url(self, scope: Scope) -> httpx.URL:
        """The URL to forward to (rules in `_target`); `InvalidTarget` if it must not be sent."""
        _, raw_path = _route_paths(scope)
        query: bytes = scope.get("query_string", b"")
        return upstream_url(self._base_url, self._base_raw_path, raw_path, query)

    def _request_headers(self, scope: Scope) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
        """The headers to forward, and the client's `content-length` if it sent one."""
        received: list[tuple[bytes, bytes]] = scope["headers"]
        dropped = _connection_tokens(received) | self._extra_names
        out: list[tuple[bytes, bytes]] = []
        content_length: bytes | None = None
        for name, value in received:
            lower = name.lower()
            if lower == b"content-length":
                content_length = value
            if lower in _REQUEST_ONLY or lower in dropped or _is_hop_by_hop(lower):
                continue
            out.append((lower, value))
        out.extend(self._extra_headers)
        return out, content_length


@dataclass(slots=True)
class _Request:
    method: str
    url: httpx.URL
    headers: list[tuple[bytes, bytes]]
    content: bytes | _RequestBody

    @property
    def path(self) -> str:
        return self.url.path


class _RequestBody:
    """The client's request body, read from `receive()` while the transport sends it on."""

    def __init__(self, first: bytes, receive: Receive, done: anyio.Event) -> None:
        self._pending: bytes | None = first
        self._receive = receive
        self._done = done
        self.client_gone = False

    def __aiter__(self) -> _RequestBody:
        return self

    async def __anext__(self) -> bytes:
        if self._pending:
            first, self._pending = self._pending, None
            return first
        while not self._done.is_set():
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.client_gone = True
                raise _ClientGone
            if not message.get("more_body", False):
                self._done.set()
            chunk: bytes = message.get("body", b"")
            if chunk:
                return chunk
        raise StopAsyncIteration


class _Exchange:
    """Our side of the client's response: what has been sent, how it ended."""

    def __init__(self, send: Send, call: observability.UpstreamCall | None = None) -> None:
        self._send = send
        self.call = call
        self.error: Exception | None = None
        self.finished = False
        # The last message of the response is on its way: a disconnect from here on is the
        # server's (uvicorn's receive() answers http.disconnect once a response is complete),
        # not the client hanging up.
        self.answered = False
        self.disconnected = False
        self.broken: Exception | None = None
        self._sse = False
        self._held = b""

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.answered = True
        try:
            await self._send(message)
        except OSError as exc:  # ASGI spec 2.4: send raises once the client is gone
            raise _ClientGone from exc

    async def send_error(self, failure: _Failure) -> None:
        body = error_body(failure.message, "server_error", None, failure.code)
        retry = [(b"retry-after", b"1")] if failure.status == 503 else []
        await send_json(self.send, failure.status, body, retry)

    async def start(self, response: UpstreamResponse) -> None:
        raw = response.raw_headers
        dropped = _connection_tokens(raw)
        headers = []
        for name, value in raw:
            lower = name.lower()
            if lower in _RESPONSE_ONLY or lower in dropped or _is_hop_by_hop(lower):
                continue
            headers.append((lower, value))
        encoding = response.headers.get("content-encoding", "identity").lower()
        content_type = response.headers.get("content-type", "").lower()
        self._sse = content_type.startswith("text/event-stream") and encoding == "identity"
        if self.call is not None:
            self.call.response_start(response.status, response.headers)
        await self.send(
            {"type": "http.response.start", "status": response.status, "headers": headers}
        )

    async def pump(self, response: UpstreamResponse) -> None:
        async for raw in response.chunks():
            chunk = self._complete_events(raw) if self._sse else raw
            if self.call is not None:
                chunk = self.call.chunk(chunk)
            if chunk:
                await self.send({"type": "http.response.body", "body": chunk, "more_body": True})
        tail = self._held if self.call is None else self.call.chunk(self._held, last=True)
        await self.send({"type": "http.response.body", "body": tail, "more_body": False})

    def _complete_events(self, chunk: bytes) -> bytes:
        # Hold back a trailing partial event, so that if the upstream fails mid-stream the error
        # event we append starts on an event boundary and parses. A client dispatches an event
        # only at its blank line anyway, so holding back delays nothing it could see.
        if not self._held and chunk.endswith(_EVENT_ENDS):  # one or more whole events: as is
            return chunk
        data = self._held + chunk
        cut = _events_end(data)
        self._held = data[cut:]
        return data[:cut]

    async def end_broken(self, exc: httpx.TransportError) -> None:
        if not self._sse:
            self.broken = exc
            return
        failure = _failure(exc)
        event = {"error": error_body(failure.message, "server_error", None, failure.code)["error"]}
        body = b"data: " + json.dumps(event).encode() + b"\n\n"
        await self.send({"type": "http.response.body", "body": body, "more_body": False})


async def _watch_disconnect(
    receive: Receive, body_read: anyio.Event, exchange: _Exchange, cancel: Callable[[], object]
) -> None:
    """Cancel the exchange as soon as the client disconnects."""
    await body_read.wait()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not (exchange.finished or exchange.answered):
                exchange.disconnected = True
                cancel()
            return


async def _run_on_anyio(
    forward: Coroutine[Any, Any, None],
    receive: Receive,
    body_read: anyio.Event,
    exchange: _Exchange,
) -> None:
    """Run `forward` while watching for a disconnect, in an anyio task group (any backend)."""
    async with anyio.create_task_group() as tg:
        cancel = tg.cancel_scope.cancel
        tg.start_soon(_watch_disconnect, receive, body_read, exchange, cancel)
        try:
            await forward
        except Exception as exc:  # raised by `_proxy`, not as an ExceptionGroup
            exchange.broken = exc
        exchange.finished = True
        tg.cancel_scope.cancel()


async def _run_on_asyncio(
    forward: Coroutine[Any, Any, None],
    receive: Receive,
    body_read: anyio.Event,
    exchange: _Exchange,
) -> None:
    """Run `forward` while watching for a disconnect, with asyncio's own tasks.

    What `_run_on_anyio` does, for a transport that runs on asyncio only: an anyio task group
    and cancel scope cost ~55 µs per request (a tenth of the whole request), two plain tasks
    ~5 µs. The exchange runs in a task of its own so that the watcher can cancel it
    alone, never the task serving the request.
    """
    loop = asyncio.get_running_loop()
    task = loop.create_task(forward)
    watcher = loop.create_task(_watch_disconnect(receive, body_read, exchange, task.cancel))
    try:
        await task
    except asyncio.CancelledError:
        # Ours when the watcher cancelled the exchange; anyone else's goes on.
        if not (exchange.disconnected and task.cancelled()) or _cancelling():
            raise
    except Exception as exc:
        exchange.broken = exc
    finally:
        exchange.finished = True
        watcher.cancel()


def _cancelling() -> bool:
    """Whether the running task was asked to cancel (not knowable before Python 3.11)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return cancelling is not None and cancelling() > 0


def _bytes_or_none(content: bytes | _RequestBody) -> bytes | None:
    return content if isinstance(content, bytes) else None


def _events_end(data: bytes) -> int:
    """Index just past the last complete SSE event in `data` (0 if none)."""
    end = 0
    for separator in _EVENT_ENDS:
        at = data.rfind(separator)
        if at != -1:
            end = max(end, at + len(separator))
    return end


def _failure(exc: httpx.TransportError) -> _Failure:
    name = type(exc).__name__
    if isinstance(exc, httpx.PoolTimeout):
        return _Failure(503, "upstream_busy", f"No upstream connection was free in time ({name}).")
    if isinstance(exc, httpx.TimeoutException):
        return _Failure(504, "upstream_timeout", f"The upstream server timed out ({name}).")
    return _Failure(502, "upstream_unavailable", f"The upstream server failed ({name}).")


def _log_failure(request: _Request, exc: httpx.TransportError, *, started: bool) -> None:
    # The class name, because str(ReadTimeout()) and friends are often empty.
    when = "after the response started" if started else "before a response"
    logger.warning(
        "upstream %s %s failed %s: %s %s",
        request.method,
        request.path,
        when,
        type(exc).__name__,
        exc,
    )


def _as_timeout(timeout: httpx.Timeout | float | None) -> httpx.Timeout:
    if isinstance(timeout, httpx.Timeout):
        return timeout
    return httpx.Timeout(
        connect=DEFAULT_TIMEOUT.connect,
        read=timeout,
        write=DEFAULT_TIMEOUT.write,
        pool=DEFAULT_TIMEOUT.pool,
    )


def _is_hop_by_hop(name: bytes) -> bool:
    return name in _HOP_BY_HOP or name.startswith(b"proxy-")


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names listed in `Connection`: hop-by-hop too (RFC 9110 §7.6.1)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(tokens)


def _route_paths(scope: Scope) -> tuple[str, str]:
    """The request path below any mount prefix: decoded, and percent-encoded as received."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    route = path
    if root and (path == root or path.startswith(root + "/")):
        route = path[len(root) :]
    raw_bytes: bytes | None = scope.get("raw_path")
    if raw_bytes:
        # raw_path keeps %2F and friends as the client wrote them; use it when it matches.
        raw = raw_bytes.decode("latin-1")
        quoted_root = quote(root, safe=_PATH_SAFE) if root else ""
        if raw.isascii() and unquote(raw) == path and raw.startswith(quoted_root):
            raw_route = raw[len(quoted_root) :]
            if unquote(raw_route) == route:
                return route, raw_route
    return route, quote(route, safe=_PATH_SAFE)
