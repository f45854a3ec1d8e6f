"""`UpstreamProxy`'s own HTTP/1.1 client (`transport="httptools"`) against a scripted upstream.

The proxy-wide guarantees run on every transport in the other `test_upstream*` modules; these
are the HTTP/1.1 details that only a client of our own can get wrong: how an answer is framed
(length, chunks, connection close, 1xx, HEAD), when a connection is reused, and timeouts and
flow control on the socket. The upstream is a raw TCP server in the test's event loop that
answers each request with the bytes a test gives it.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import httpx
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from prompt_middleware import UpstreamProxy
from prompt_middleware.gateway._httptools import (
    _HIGH_WATER,
    HttptoolsTransport,
    _HeaderView,
    _Response,
)
from prompt_middleware.testing import CaptureApp, asgi_client

from .helpers import SendLog, http_scope, settle
from .servers import running_server

pytestmark = pytest.mark.anyio

OK = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}'


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the transport runs on asyncio only


@dataclass
class Received:
    connection: int
    head: bytes
    body: bytes


@dataclass
class Scripted:
    """A raw HTTP/1.1 upstream: each request is answered with `answer(request)`'s bytes
    (b"": the connection is closed instead; a list: its pieces `gap` seconds apart)."""

    answer: Callable[[Received], bytes | list[bytes]]
    url: str = ""
    requests: list[Received] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)
    close_after_answer: bool = False
    gap: float = 0.0
    _connections: int = 0

    async def serve(self, stream: anyio.abc.ByteStream) -> None:
        number = self._connections
        self._connections += 1
        reader = BufferedByteReceiveStream(stream)
        try:
            while True:
                head = await reader.receive_until(b"\r\n\r\n", 65536)
                body = await _read_body(reader, head)
                request = Received(number, head, body)
                self.requests.append(request)
                answer = self.answer(request)
                if not answer:
                    return
                for index, piece in enumerate([answer] if isinstance(answer, bytes) else answer):
                    if index:
                        await anyio.sleep(self.gap)
                    await stream.send(piece)
                if self.close_after_answer:
                    return
        except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError):
            pass
        finally:
            self.closed.append(number)
            await stream.aclose()


async def _read_body(reader: BufferedByteReceiveStream, head: bytes) -> bytes:
    lines = head.lower().split(b"\r\n")
    for line in lines:
        if line.startswith(b"content-length:"):
            return await reader.receive_exactly(int(line.split(b":")[1]))
    if b"transfer-encoding: chunked" in lines:
        body = b""
        while size := int(await reader.receive_until(b"\r\n", 64), 16):
            body += await reader.receive_exactly(size)
            await reader.receive_exactly(2)
        await reader.receive_exactly(2)
        return body
    return b""


@asynccontextmanager
async def scripted(
    answer: Callable[[Received], bytes | list[bytes]],
    *,
    close_after_answer: bool = False,
    gap: float = 0.0,
) -> AsyncIterator[Scripted]:
    upstream = Scripted(answer, close_after_answer=close_after_answer, gap=gap)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    upstream.url = f"http://127.0.0.1:{port}"
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, upstream.serve)
        try:
            yield upstream
        finally:
            tg.cancel_scope.cancel()


def proxy(url: str, **options: object) -> UpstreamProxy:
    return UpstreamProxy(url, transport="httptools", **options)  # type: ignore[arg-type]


async def call(target: UpstreamProxy, method: str = "POST", body: bytes = b"{}") -> SendLog:
    sent = SendLog()
    scope = http_scope(method=method)
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, object]:
        if messages:
            return messages.pop()
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    with anyio.fail_after(5):
        await target(scope, receive, sent)
    return sent


async def test_the_request_head_and_body_go_in_one_piece_and_the_connection_is_reused() -> None:
    async with scripted(lambda _: OK) as upstream, proxy(upstream.url) as target:
        for _ in range(3):
            sent = await call(target, body=b'{"a":1}')
            assert sent.status == 200
            assert sent.body == b'{"ok":true}'
    assert [r.connection for r in upstream.requests] == [0, 0, 0]
    head = upstream.requests[0].head.decode()
    assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:")
    assert "content-type: application/json" in head
    assert "content-length: 7" in head
    assert upstream.requests[0].body == b'{"a":1}'


async def test_a_chunked_answer_is_passed_on_dechunked() -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    async with scripted(lambda _: answer) as upstream, proxy(upstream.url) as target:
        assert (await call(target)).body == b"hello world"
        assert (await call(target)).body == b"hello world"
    assert [r.connection for r in upstream.requests] == [0, 0]


async def test_an_answer_that_ends_at_close_is_read_to_its_end_and_not_reused() -> None:
    answer = b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 100_000  # no length, not chunked
    upstream_context = scripted(lambda _: answer, close_after_answer=True)
    async with upstream_context as upstream, proxy(upstream.url) as target:
        first = await call(target)
        second = await call(target)
    assert first.status == second.status == 200
    assert first.body == second.body == b"x" * 100_000
    assert [r.connection for r in upstream.requests] == [0, 1]


async def test_connection_close_is_honoured_with_a_length_too() -> None:
    answer = OK.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n")
    async with scripted(lambda _: answer) as upstream, proxy(upstream.url) as target:
        await call(target)
        await call(target)
    assert [r.connection for r in upstream.requests] == [0, 1]


async def test_an_informational_answer_is_skipped() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\n" + OK
    async with scripted(lambda _: answer) as upstream, proxy(upstream.url) as target:
        sent = await call(target)
        assert (sent.status, sent.body) == (200, b'{"ok":true}')
        assert (await call(target)).status == 200
    assert [r.connection for r in upstream.requests] == [0, 0]


async def test_the_answer_to_head_has_no_body_and_its_connection_is_not_reused() -> None:
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n"
    async with scripted(lambda _: answer) as upstream, proxy(upstream.url) as target:
        sent = await call(target, method="HEAD", body=b"")
        assert sent.status == 200
        assert sent.body == b""
        await call(target, method="HEAD", body=b"")
    assert [r.connection for r in upstream.requests] == [0, 1]


async def test_bytes_after_the_answer_keep_the_connection_from_reuse() -> None:
    async with (
        scripted(lambda _: OK + b"HTTP/1.1 200 OK\r\n") as upstream,
        proxy(upstream.url) as target,
    ):
        assert (await call(target)).body == b'{"ok":true}'
        assert (await call(target)).status == 200
    assert [r.connection for r in upstream.requests] == [0, 1]


async def test_an_answer_that_is_not_http_is_502() -> None:
    not_http = b"SSH-2.0-OpenSSH_9.6\r\n\r\n"
    async with scripted(lambda _: not_http) as upstream, proxy(upstream.url) as target:
        sent = await call(target)
    assert sent.status == 502
    assert b"RemoteProtocolError" in sent.body


async def test_a_close_without_an_answer_is_502() -> None:
    async with scripted(lambda _: b"") as upstream, proxy(upstream.url) as target:
        sent = await call(target)
    assert sent.status == 502
    assert b"RemoteProtocolError" in sent.body


async def test_a_line_break_in_a_header_is_refused_before_anything_is_sent() -> None:
    async with scripted(lambda _: OK) as upstream:
        target = proxy(upstream.url, headers={"x-tenant": "a\r\nx-injected: 1"})
        async with target:
            sent = await call(target)
    assert sent.status == 502
    assert upstream.requests == []


async def test_idle_connections_close_after_the_keepalive_expiry() -> None:
    limits = httpx.Limits(max_connections=10, keepalive_expiry=0.2)
    async with scripted(lambda _: OK) as upstream, proxy(upstream.url, limits=limits) as target:
        await call(target)
        await settle(lambda: upstream.closed == [0])
        await call(target)  # a new connection
    assert [r.connection for r in upstream.requests] == [0, 1]


async def test_an_upload_the_upstream_does_not_read_is_a_write_timeout() -> None:
    # A listening socket nobody accepts from: the kernel takes the connection and a few MB,
    # then the upload stalls.
    with socket.create_server(("127.0.0.1", 0)) as listening:
        port = listening.getsockname()[1]
        timeout = httpx.Timeout(connect=5, read=5, write=0.3, pool=5)
        async with proxy(f"http://127.0.0.1:{port}", timeout=timeout) as target:
            sent = await call(target, body=b"x" * (64 * 1024 * 1024))
    assert sent.status == 504
    assert b"WriteTimeout" in sent.body


async def test_a_tls_handshake_that_never_ends_is_a_connect_timeout_and_its_socket_closed() -> None:
    # A listening socket nobody accepts from: the kernel takes the connection, nobody answers
    # the TLS hello. After the timeout, the accepted socket reads the client's end.
    with socket.create_server(("127.0.0.1", 0)) as listening:
        port = listening.getsockname()[1]
        timeout = httpx.Timeout(connect=0.3, read=5, write=5, pool=5)
        async with proxy(f"https://127.0.0.1:{port}", timeout=timeout) as target:
            sent = await call(target)
        assert sent.status == 504
        assert b"ConnectTimeout" in sent.body
        listening.settimeout(5)
        accepted, _ = listening.accept()
        with accepted:
            accepted.settimeout(5)
            hello = accepted.recv(65536)
            assert hello.startswith(b"\x16\x03")  # a TLS handshake record: the client hello
            assert await anyio.to_thread.run_sync(_closed_by_peer, accepted)


def _closed_by_peer(connection: socket.socket) -> bool:
    """Whether the peer closes its end before the socket's timeout (what it sends is read)."""
    try:
        while connection.recv(65536):
            pass
    except TimeoutError:
        return False
    return True


async def test_a_cancellation_as_the_connection_completes_closes_it_and_is_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The caller is cancelled in the moment its new connection is made (cannot be timed from
    outside: the loop's `create_connection` is wrapped to cancel it there). The cancellation
    reaches the caller and the connection is closed, neither dropped open nor used."""
    async with scripted(lambda _: OK) as upstream:
        loop = asyncio.get_running_loop()
        real_create_connection = loop.create_connection
        opened: list[asyncio.BaseTransport] = []

        async def create_connection(*args: Any, **kwargs: Any) -> Any:
            made = await real_create_connection(*args, **kwargs)
            opened.append(made[0])
            caller.cancel()
            return made

        monkeypatch.setattr(loop, "create_connection", create_connection)
        transport = HttptoolsTransport(
            timeout=httpx.Timeout(5), limits=httpx.Limits(max_connections=4), trust_env=False
        )
        caller = asyncio.ensure_future(transport.send("POST", httpx.URL(upstream.url), [], b"{}"))
        try:
            with pytest.raises(asyncio.CancelledError):
                await caller
            await anyio.lowlevel.checkpoint()  # the closing callback runs
            assert len(opened) == 1
            assert opened[0].is_closing()
            assert upstream.requests == []
        finally:
            await transport.aclose()


async def test_the_read_timeout_counts_from_the_last_bytes_not_the_first() -> None:
    """Events 0.1 s apart over 0.6 s pass a 0.3 s read timeout; a pause of 0.5 s does not."""
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    events = [b"9\r\ndata: %d\n\n\r\n" % n for n in range(6)]
    timeout = httpx.Timeout(connect=5, read=0.3, write=5, pool=5)
    steady = scripted(lambda _: [head, *events, b"0\r\n\r\n"], gap=0.1)
    async with steady as upstream, proxy(upstream.url, timeout=timeout) as target:
        sent = await call(target)
    assert sent.status == 200
    assert sent.body == b"".join(b"data: %d\n\n" % n for n in range(6))

    stalled = scripted(lambda _: [head + events[0], events[1]], gap=0.5)
    async with stalled as upstream, proxy(upstream.url, timeout=timeout) as target:
        sent = await call(target)
    assert sent.status == 200
    # The stream ends with an error event after the first event: the read timed out.
    assert sent.body.startswith(b"data: 0\n\ndata: {")
    assert b"upstream_timeout" in sent.body
    assert b"data: 1" not in sent.body


async def test_an_unread_answer_stops_being_read_from_the_socket() -> None:
    """Flow control: what arrives faster than it is passed on waits in the kernel, not here."""
    size = 16 * 1024 * 1024
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size + b"y" * size
    async with scripted(lambda _: answer) as upstream:
        transport = HttptoolsTransport(
            timeout=httpx.Timeout(5), limits=httpx.Limits(max_connections=4), trust_env=False
        )
        try:
            response = await transport.send("GET", httpx.URL(upstream.url), [], b"")
            await anyio.sleep(0.3)
            assert isinstance(response, _Response)
            connection = response._connection
            assert connection is not None
            assert connection._reading_paused
            assert connection._buffered < _HIGH_WATER + 1024 * 1024
            received = 0
            with anyio.fail_after(10):
                async for chunk in response.chunks():
                    received += len(chunk)
            assert received == size
            await response.aclose(complete=True)
        finally:
            await transport.aclose()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_upstream(certificate: tuple[Path, Path]) -> Iterator[tuple[CaptureApp, str]]:
    cert, key = certificate
    app = CaptureApp({"ok": True})
    with running_server(app, lifespan="off", ssl_certfile=str(cert), ssl_keyfile=str(key)) as url:
        yield app, url.replace("http://", "https://")


async def test_https_to_an_upstream_whose_certificate_is_trusted(
    tls_upstream: tuple[CaptureApp, str],
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Verified as httpx verifies: `SSL_CERT_FILE` (with trust_env) names what to trust."""
    app, url = tls_upstream
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with proxy(url) as target, asgi_client(target, run_lifespan=False) as client:
        for _ in range(2):
            response = await client.post("/v1/chat/completions", json={"model": "m"})
            assert response.status_code == 200
            assert response.json() == {"ok": True}
    assert app.last.json == {"model": "m"}


async def test_https_to_an_untrusted_certificate_is_502(
    tls_upstream: tuple[CaptureApp, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url = tls_upstream
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    async with proxy(url) as target, asgi_client(target, run_lifespan=False) as client:
        response = await client.post("/v1/chat/completions", json={"model": "m"})
    assert response.status_code == 502
    assert "ConnectError" in response.json()["error"]["message"]


def test_response_headers_are_read_case_insensitively_with_repeats_joined() -> None:
    view = _HeaderView(
        [(b"Content-Type", b"text/event-stream"), (b"X-Trace", b"a"), (b"x-trace", b"b")]
    )
    assert view.get("content-type") == "text/event-stream"
    assert view["X-TRACE"] == "a, b"
    assert view.get("content-encoding", "identity") == "identity"
    assert sorted(view) == ["content-type", "x-trace"]
    assert len(view) == 2
