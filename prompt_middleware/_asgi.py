"""Small ASGI helpers shared by the middleware, the echo upstream and the testing apps."""

from __future__ import annotations

from starlette.types import Message, Receive

__all__ = ["read_body", "replay"]


async def read_body(receive: Receive) -> bytes:
    """The whole request body; what arrived so far if the client disconnects."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


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
