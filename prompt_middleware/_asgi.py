"""Small helpers shared by the middleware, the echo upstream, the testing apps and the CLI."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Message, Receive, Send

__all__ = ["answer_lifespan", "json_text", "read_body", "replay"]


async def answer_lifespan(receive: Receive, send: Send) -> None:
    """Answer the ASGI lifespan protocol for an app that has nothing to start or stop."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None if the client disconnected before it was complete."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def json_text(data: Any, **options: Any) -> str:
    """`json.dumps` keeping non-ASCII text as is, except lone surrogates (only escapable)."""
    try:
        text = json.dumps(data, ensure_ascii=False, **options)
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(data, ensure_ascii=True, **options)
    return text


def replay(body: bytes, receive: Receive) -> Receive:
    """Hand out `body` once; later calls wait on the server (so disconnects still arrive).

    Returning anything else on later calls would make apps that poll `receive()` for a
    disconnect spin, or hang the event loop if no checkpoint is hit.
    """
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed
