"""No secret in any log line: the upstream URL's password, server and client keys, query values.

Every logger that can write a request line is switched to DEBUG and collected: ours, httpx,
httpcore and uvicorn's (error and access). The upstream must still get the credentials.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import anyio.abc
import httpx
import pytest

from prompt_middleware.gateway._logsafe import mask_query
from prompt_middleware.gateway.upstream import UpstreamProxy
from prompt_middleware.testing import CaptureApp, asgi_client

from .gateway_process import gateway_env, run_cli, serving, write_config
from .servers import free_port, running_server

pytestmark = pytest.mark.anyio

PASSWORD = "pw-Secret-9f2c"
SERVER_KEY = "sk-server-5e1d"
CLIENT_KEY = "sk-client-77aa"
QUERY_KEY = "qk-query-3b9e"
SECRETS = (PASSWORD, SERVER_KEY, CLIENT_KEY, QUERY_KEY)
BASIC = "Basic " + base64.b64encode(f"user:{PASSWORD}".encode()).decode()
# Loggers that do not propagate to the root (uvicorn's) get the collector themselves.
ENABLED = ("httpx", "httpcore", "prompt_middleware", "uvicorn", "uvicorn.error", "uvicorn.access")
COLLECTED = ("", "uvicorn", "uvicorn.access")


@contextmanager
def every_log_line() -> Iterator[list[str]]:
    """Every record the loggers above write at DEBUG, formatted with name and traceback."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    collect = Collect(logging.DEBUG)
    collect.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger(name) for name in {*ENABLED, *COLLECTED}]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    for name in COLLECTED:
        logging.getLogger(name).addHandler(collect)
    try:
        yield lines
    finally:
        for name in COLLECTED:
            logging.getLogger(name).removeHandler(collect)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def assert_no_secret(lines: list[str]) -> None:
    for line in lines:
        for secret in SECRETS:
            assert secret not in line, line


def with_password(url: str) -> str:
    return url.replace("http://", f"http://user:{PASSWORD}@", 1)


async def test_in_process_proxy_logs_no_secret(anyio_backend: str) -> None:
    capture = CaptureApp({"ok": True})
    dead = f"http://user:{PASSWORD}@127.0.0.1:{free_port()}/v1"
    with running_server(capture) as upstream_url:
        proxy = UpstreamProxy(with_password(upstream_url) + "/v1")
        keyed = UpstreamProxy(dead, headers={"Authorization": f"Bearer {SERVER_KEY}"})
        with running_server(proxy) as proxy_url, every_log_line() as lines:
            async with httpx.AsyncClient() as client:
                served = await client.get(
                    proxy_url + "/v1/models", headers={"authorization": f"Bearer {CLIENT_KEY}"}
                )
            # On this test's backend: a key in the query, to an upstream that logs nothing.
            async with anyio.create_task_group() as tg:
                port, heads = await tg.start(_one_answer_server)
                local = UpstreamProxy(f"http://user:{PASSWORD}@127.0.0.1:{port}/v1")
                async with local, asgi_client(local, run_lifespan=False) as client:
                    queried = await client.get(f"/models?api-version=1&api-key={QUERY_KEY}")
            async with keyed, asgi_client(keyed, run_lifespan=False) as client:
                failed = await client.get(f"/models?key={QUERY_KEY}")
    assert_no_secret(lines)
    assert (served.status_code, queried.status_code, failed.status_code) == (200, 200, 502)
    assert capture.last.headers.getlist("authorization") == [BASIC]
    head = heads[0].decode("latin-1")
    assert head.startswith(f"GET /v1/models?api-version=1&api-key={QUERY_KEY} HTTP/1.1\r\n")
    assert f"\r\nauthorization: {BASIC.lower()}\r\n" in head.lower()
    # The loggers were on: httpx's request line (masked), httpcore, uvicorn's access line, ours.
    assert any("HTTP Request: GET" in line and "api-key=***" in line for line in lines), lines
    assert any(line.startswith("httpcore") for line in lines), lines
    assert any(line.startswith("uvicorn.access") for line in lines), lines
    assert any(line.startswith("prompt_middleware.upstream WARNING") for line in lines), lines


async def _one_answer_server(
    *, task_status: anyio.abc.TaskStatus[tuple[int, list[bytes]]] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Answer one request on a loopback port with `{}`; its head is kept, nothing is logged."""
    heads: list[bytes] = []
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listeners:
        listener = listeners.listeners[0]
        assert isinstance(listener, anyio.abc.SocketListener)
        task_status.started((listener.extra(anyio.abc.SocketAttribute.local_port), heads))
        async with await listener.accept() as stream:
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive()
            heads.append(head)
            await stream.send(
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"
            )


def test_serve_logs_no_secret() -> None:
    capture = CaptureApp({"ok": True})
    with running_server(capture) as upstream_url:
        args = ["--upstream", with_password(upstream_url) + "/v1", "--prompts", "examples/prompts"]
        args += ["--cache-ttl", "0", "--log-level", "debug"]
        with serving(*args, stdout=True) as basic:
            chat = httpx.post(
                f"{basic.url}/v1/chat/completions?api-key={QUERY_KEY}",
                json={"model": "m", "prompt_id": "greeting", "prompt_variables": {"name": "A"}},
                headers={"authorization": f"Bearer {CLIENT_KEY}"},
            )
            models = httpx.get(f"{basic.url}/v1/models?api-version=1&key={QUERY_KEY}")
        env = gateway_env(UPSTREAM_API_KEY=SERVER_KEY)
        with serving(*args, env=env, stdout=True) as keyed:
            keyed_models = httpx.get(f"{keyed.url}/v1/models?key={QUERY_KEY}")
    for gateway in (basic, keyed):
        assert gateway.process.returncode == 0, gateway.log
        assert_no_secret(gateway.log)
        # The lines that used to carry them are there, masked. httpx logs every request line;
        # aiohttp (the gateway's client on asyncio when installed) logs none.
        httpx_lines = [line for line in gateway.log if "HTTP Request: GET" in line]
        assert all("key=***" in line for line in httpx_lines), httpx_lines
        # One access line per request, the gateway's: the path without the query. uvicorn's
        # own (which showed the query, masked) is off under `serve`.
        assert any(line.startswith("INFO:     GET /v1/models 200 ") for line in gateway.log)
        assert not any('"GET /v1/models?' in line for line in gateway.log), gateway.log
    assert (chat.status_code, models.status_code, keyed_models.status_code) == (200, 200, 200)
    authorizations = [r.headers.getlist("authorization") for r in capture.requests]
    # The explicit server key wins over the URL's userinfo.
    assert authorizations == [[BASIC], [BASIC], [f"Bearer {SERVER_KEY}"]]
    assert capture.requests[1].query_string == f"api-version=1&key={QUERY_KEY}".encode()


@pytest.mark.parametrize(
    ("query", "masked"),
    [
        ("a=1&key=s", "a=***&key=***"),
        ("key=", "key=***"),
        ("secret", "***"),
        ("a=1&&b", "a=***&&***"),
        ("", ""),
    ],
)
def test_mask_query(query: str, masked: str) -> None:
    assert mask_query(query) == masked


def test_startup_errors_hide_the_password(tmp_path: Path) -> None:
    bad = f"ftp://user:{PASSWORD}@127.0.0.1/v1"
    flag = run_cli("serve", "--upstream", bad, "--prompts", "examples/prompts")
    config = write_config(
        tmp_path / "gateway.json",
        {"registry": {"files": "examples/prompts"}, "upstreams": {"main": {"base_url": bad}}},
    )
    in_file = run_cli("serve", "--config", str(config))
    for result in (flag, in_file):
        assert result.returncode != 0
        assert "ftp://***@127.0.0.1/v1" in result.stderr, result.stderr
        assert_no_secret([result.stdout, result.stderr])
    with pytest.raises(ValueError, match="base_url") as raised:
        UpstreamProxy(bad)
    assert PASSWORD not in str(raised.value)
