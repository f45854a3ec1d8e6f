"""Small ASGI chores, written once: JSON answers, bounded body reads, replay, lifespan and its
background jobs, paths.

Used by the middleware, the gateway's apps (upstream proxy, echo upstream) and the testing apps.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import anyio
import anyio.abc
from starlette.types import Message, Receive, Scope, Send

from .core.errors import PromptMiddlewareError, RequestTimeout, RequestTooLarge

__all__ = [
    "Background",
    "answer_lifespan",
    "json_text",
    "pushed_back",
    "read_body",
    "replay",
    "route_path",
    "send_error",
    "send_json",
]


async def answer_lifespan(receive: Receive, send: Send) -> None:
    """Answer the ASGI lifespan protocol for an app that has nothing to start or stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class Background:
    """Jobs run beside an app for its lifespan (a poller, a subscriber, readiness checks).

    They are stopped, and awaited, as soon as the server asks to shut down
    (`stopping_at_shutdown`): before the app closes what they use, and before the server hears
    that shutdown is complete. uvicorn then stops the event loop, and a job still unwinding
    would be cancelled from outside, which uvicorn logs as a lifespan error.
    """

    def __init__(self, jobs: list[Callable[[], Coroutine[Any, Any, None]]]) -> None:
        self._jobs = jobs
        self._scope = anyio.CancelScope()
        self._done = anyio.Event()
        self._started = False

    def start(self, task_group: anyio.abc.TaskGroup) -> None:
        self._started = True
        task_group.start_soon(self._run)

    async def _run(self) -> None:
        try:
            with self._scope:
                async with anyio.create_task_group() as jobs:
                    for job in self._jobs:
                        jobs.start_soon(job)
        finally:
            self._done.set()

    async def stop(self) -> None:
        self._scope.cancel()
        if self._started:
            await self._done.wait()

    def stopping_at_shutdown(self, receive: Receive) -> Receive:
        """`receive` for the app: the jobs are stopped before it hears `lifespan.shutdown`."""

        async def receiving() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self.stop()
            return message

        return receiving


async def read_body(
    receive: Receive, limit: int | None = None, time_limit: float | None = None
) -> bytes | None:
    """The whole request body, or None if the client disconnected before it was complete.

    With `limit`, `RequestTooLarge` as soon as more than `limit` bytes arrived. With
    `time_limit`, `RequestTimeout` when the body is still incomplete `time_limit` seconds after
    its first part arrived. A cancel scope (even reading the clock) costs microseconds per
    request on either backend, so the first `receive()`, which usually holds the whole body, is
    awaited plainly and only the rest of a body that comes in parts is timed.
    """
    message = await receive()
    if message["type"] != "http.request":
        return None
    first: bytes = message.get("body", b"")
    if limit is not None and len(first) > limit:
        raise _too_large(limit)
    if not message.get("more_body", False):
        return first
    if time_limit is None:
        return await _read_rest(receive, first, limit)
    try:
        with anyio.fail_after(time_limit):
            return await _read_rest(receive, first, limit)
    except TimeoutError:
        raise RequestTimeout(
            f"The request body did not arrive within {time_limit:g} seconds."
        ) from None


async def _read_rest(receive: Receive, first: bytes, limit: int | None) -> bytes | None:
    chunks = [first] if first else []
    size = len(first)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk: bytes = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if limit is not None and size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"Request body is larger than the {limit}-byte limit.")


def json_text(data: Any, **options: Any) -> str:
    """`json.dumps` keeping non-ASCII text as is, except lone surrogates (only escapable)."""
    try:
        text = json.dumps(data, ensure_ascii=False, **options)
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(data, ensure_ascii=True, **options)
    return text


async def send_json(
    send: Send,
    status: int,
    data: Any,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Answer with `data` as JSON (and any extra `headers`); no response may have started."""
    body = json_text(data).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(
    send: Send, error: PromptMiddlewareError, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """Answer with `error` in OpenAI's shape, at its status; no response may have started."""
    await send_json(send, error.status_code, error.to_dict(), headers)


def replay(body: bytes, receive: Receive) -> Receive:
    """Hand out `body` once; later calls wait on the server (so disconnects still arrive).

    Returning anything else on later calls would make apps that poll `receive()` for a
    disconnect spin, or hang the event loop if no checkpoint is hit.
    """
    return pushed_back({"type": "http.request", "body": body, "more_body": False}, receive)


def pushed_back(message: Message, receive: Receive) -> Receive:
    """`receive` with `message` handed out first (one already received, or one made up)."""
    pending: Message | None = message

    async def receive_again() -> Message:
        nonlocal pending
        if pending is None:
            return await receive()
        message, pending = pending, None
        return message

    return receive_again


def route_path(scope: Scope) -> str:
    """`scope["path"]` below the mount prefix `root_path`, which ends at a segment boundary.

    A prefix that does not end at a `/` (root `/api`, path `/apiv1/...`) is not a mount of it.
    """
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root) :]
    return path
