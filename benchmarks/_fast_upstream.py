"""A fake OpenAI upstream that costs next to nothing, for `gateway.py`.

    python benchmarks/_fast_upstream.py PORT

A bare asyncio protocol (uvloop when installed) speaking just enough HTTP/1.1 for a gateway
and wrk on 127.0.0.1: keep-alive, `content-length` request bodies, pipelining tolerated. Every
request is answered at once with a fixed chat completion (~330 bytes, `content-length`), or,
when the body asks for `"stream":true`, with `x-chunks: N` SSE events (default 20) and
`data: [DONE]`, with chunked transfer-encoding (the framing OpenAI uses): written in one go, or
with `x-chunk-gap-ms: G` one event every G ms, so that each event reaches the gateway in a read
of its own, as tokens from a model do. It answers in ~10 µs of CPU, so what a run measures is
the gateway in front of it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Your order ships tomorrow."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 412, "completion_tokens": 6, "total_tokens": 418},
    },
    separators=(",", ":"),
).encode()
_JSON_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(_COMPLETION)).encode()
    + b"\r\n\r\n"
    + _COMPLETION
)
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


def _event(i: int) -> bytes:
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


_STREAMS: dict[int, list[bytes]] = {}


def _framed(chunks: int) -> list[bytes]:
    """The HTTP chunks of an SSE response of `chunks` events, the last chunk included."""
    cached = _STREAMS.get(chunks)
    if cached is None:
        events = [_event(i) for i in range(chunks)] + [b"data: [DONE]\n\n"]
        cached = [b"%x\r\n%s\r\n" % (len(e), e) for e in events] + [b"0\r\n\r\n"]
        _STREAMS[chunks] = cached
    return cached


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        assert self.transport is not None
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end == -1:
                return
            head = self.buffer[:end].lower()
            length = 0
            chunks = 20
            gap = 0.0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name == b"content-length":
                    length = int(value)
                elif name == b"x-chunks":
                    chunks = int(value)
                elif name == b"x-chunk-gap-ms":
                    gap = float(value) / 1000
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            if b'"stream":true' in body:
                self._stream(_framed(chunks), gap)
            else:
                self.transport.write(_JSON_RESPONSE)

    def _stream(self, framed: list[bytes], gap: float) -> None:
        if not gap:
            self.transport.write(_SSE_HEAD + b"".join(framed))
            return
        self.transport.write(_SSE_HEAD)
        loop = asyncio.get_running_loop()
        for i, piece in enumerate(framed):
            loop.call_later(gap * (i + 1), self._write, piece)

    def _write(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Protocol, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    port = int(sys.argv[1])
    try:
        import uvloop

        uvloop.run(_serve(port))
    except ImportError:
        asyncio.run(_serve(port))


if __name__ == "__main__":
    main()
