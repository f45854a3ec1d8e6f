"""Helpers for integration-testing prompts and the apps that use `PromptMiddleware`.

* `EchoUpstream`: a fake OpenAI server whose replies are the request it received.
* `CaptureApp`: an ASGI app that records every request reaching it (the rewritten body, headers,
  `scope["state"]["prompt"]`) and answers like `EchoUpstream`, or with a fixed response.
* `asgi_client(app)` / `openai_client(app)`: in-process `httpx.AsyncClient` / `openai.AsyncOpenAI`
  over an ASGI transport, with the app's lifespan run around them; `lifespan(app)` alone.

In-process transports deliver a streamed response only once it is complete, so check streaming
content here and timing against a real server. Works on asyncio and trio. `openai` is imported only
when `openai_client` is called.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import httpx
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._asgi import read_body, replay
from .gateway.echo import EchoUpstream

if TYPE_CHECKING:
    import openai

__all__ = [
    "CaptureApp",
    "CapturedRequest",
    "EchoUpstream",
    "asgi_client",
    "lifespan",
    "openai_client",
]

logger = logging.getLogger("prompt_middleware.testing")


@dataclass(frozen=True)
class CapturedRequest:
    """One request as the app behind the middleware received it."""

    method: str
    path: str
    raw_path: bytes
    query_string: bytes
    headers: Headers
    body: bytes
    prompt: Any = None
    """`scope["state"]["prompt"]`: what the middleware resolved, or None if it rewrote nothing."""
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def json(self) -> Any:
        """The body parsed as JSON (raises `ValueError` if it is not JSON)."""
        return json.loads(self.body)

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The `messages` of a chat completion request body."""
        messages: list[dict[str, Any]] = self.json["messages"]
        return messages


class CaptureApp:
    """Records each HTTP request, then answers it.

    With no `response`, it answers as `EchoUpstream` does (so the openai client parses the reply);
    otherwise with `response` as JSON (bytes and str are sent as they are), `status_code` and
    `headers`. Requests are in `requests`, the latest in `last`.
    """

    def __init__(
        self,
        response: Any = None,
        *,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.requests: list[CapturedRequest] = []
        self._response = response
        self._status_code = status_code
        self._headers = dict(headers or {})
        self._echo = EchoUpstream()

    @property
    def last(self) -> CapturedRequest:
        if not self.requests:
            raise LookupError("CaptureApp has received no request yet")
        return self.requests[-1]

    def clear(self) -> None:
        self.requests.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._echo(scope, receive, send)  # lifespan handling
            return
        body = await read_body(receive)
        if body is None:  # the client left before its body was complete: nothing was sent
            return
        state = scope.get("state") or {}
        self.requests.append(
            CapturedRequest(
                method=scope["method"],
                path=scope["path"],
                raw_path=scope.get("raw_path") or scope["path"].encode(),
                query_string=scope.get("query_string", b""),
                headers=Headers(raw=list(scope["headers"])),
                body=body,
                prompt=state.get("prompt"),
                state=dict(state),
            )
        )
        if self._response is None:
            await self._echo(scope, replay(body, receive), send)
        else:
            await self._respond(send)

    async def _respond(self, send: Send) -> None:
        response = self._response
        headers = {k.lower(): v for k, v in self._headers.items()}
        if isinstance(response, bytes | str):
            content = response.encode() if isinstance(response, str) else response
        else:
            content = json.dumps(response).encode()
            headers.setdefault("content-type", "application/json")
        headers["content-length"] = str(len(content))
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": self._status_code, "headers": raw})
        await send({"type": "http.response.body", "body": content, "more_body": False})


@asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[dict[str, Any]]:
    """Run `app`'s lifespan startup before the block and its shutdown after; yield its state.

    As the ASGI spec asks of servers, an app that raises or returns without answering is taken not
    to support lifespan. `lifespan.startup.failed` (or `shutdown.failed`) raises `RuntimeError`.
    """
    state: dict[str, Any] = {}
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}
    to_app, app_inbox = anyio.create_memory_object_stream[Message](1)
    app_outbox, from_app = anyio.create_memory_object_stream[Message](1)

    async def run() -> None:
        async with app_outbox, app_inbox:
            try:
                await app(scope, app_inbox.receive, app_outbox.send)
            except Exception as exc:
                logger.debug("lifespan not supported (%s)", type(exc).__name__)

    # Errors are raised after the task group, so they come out as themselves, not in a group.
    error: Exception | None = None
    async with anyio.create_task_group() as tg, to_app, from_app:
        tg.start_soon(run)
        started, error = await _lifespan_event(to_app, from_app, "startup")
        if error is None:
            try:
                yield state
            except Exception as exc:
                error = exc
            finally:
                if started:
                    with anyio.CancelScope(shield=True):
                        _, failed = await _lifespan_event(to_app, from_app, "shutdown")
                    error = error or failed
        tg.cancel_scope.cancel()
    if error is not None:
        raise error


async def _lifespan_event(
    to_app: anyio.abc.ObjectSendStream[Message],
    from_app: anyio.abc.ObjectReceiveStream[Message],
    step: str,
) -> tuple[bool, RuntimeError | None]:
    """Send `lifespan.<step>`; whether the app answered, and the error if it failed."""
    try:
        await to_app.send({"type": f"lifespan.{step}"})
        answer = await from_app.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        return False, None  # the app does not do lifespan
    if answer["type"] == f"lifespan.{step}.failed":
        return True, RuntimeError(f"lifespan {step} failed: {answer.get('message', '')}")
    return True, None


@asynccontextmanager
async def asgi_client(
    app: ASGIApp,
    *,
    base_url: str = "http://testserver",
    run_lifespan: bool = True,
    **kwargs: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    """An `httpx.AsyncClient` that calls `app` in-process; extra kwargs go to the client."""
    async with (
        _started(app, run_lifespan) as wrapped,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=wrapped), base_url=base_url, **kwargs
        ) as client,
    ):
        yield client


@asynccontextmanager
async def openai_client(
    app: ASGIApp,
    *,
    base_url: str = "http://testserver/v1",
    api_key: str = "test-key",
    run_lifespan: bool = True,
    **kwargs: Any,
) -> AsyncIterator[openai.AsyncOpenAI]:
    """An `openai.AsyncOpenAI` that calls `app` in-process, with `max_retries=0` by default.

    Extra kwargs go to `AsyncOpenAI` (e.g. `default_headers`). Needs the `openai` package.
    """
    import openai

    # openai 3 is built on httpx2; older releases on httpx. Both ship an ASGITransport.
    try:
        http: Any = importlib.import_module("httpx2")
    except ImportError:  # pragma: no cover - depends on the installed openai
        http = httpx
    kwargs.setdefault("max_retries", 0)
    async with _started(app, run_lifespan) as wrapped:
        http_client = http.AsyncClient(transport=http.ASGITransport(app=wrapped))
        client = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, http_client=http_client, **kwargs
        )
        try:
            yield client
        finally:
            await client.close()


@asynccontextmanager
async def _started(app: ASGIApp, run_lifespan: bool) -> AsyncIterator[ASGIApp]:
    """`app`, with its lifespan run and its state given to each request, as a server does."""
    if not run_lifespan:
        yield app
        return
    async with lifespan(app) as state:

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] in ("http", "websocket") and "state" not in scope:
                scope = {**scope, "state": dict(state)}
            await app(scope, receive, send)

        yield with_state
