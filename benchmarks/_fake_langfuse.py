"""A tiny fake of Langfuse's prompt endpoint for `cache_concurrency.py`.

`GET /api/public/v2/prompts/{name}` answers every name `bench-…` with the same chat prompt after
`latency` seconds (an asyncio sleep, so slow answers overlap as they would over a network), and
counts the requests per name. Anything else is a 404. It does not check credentials.
"""

from __future__ import annotations

import json
import sys
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
from _workload import make_prompt
from starlette.types import Receive, Scope, Send

from prompt_middleware._asgi import answer_lifespan

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.servers import running_server

__all__ = ["FakeLangfuse", "serving"]

PROMPTS_PATH = "/api/public/v2/prompts/"


def langfuse_body(name: str, *, placeholders: bool = True) -> bytes:
    """Langfuse's answer for the benchmark's prompt under `name` (without its placeholder
    messages when `placeholders` is False)."""
    prompt = make_prompt()
    messages = [
        dict(m) if m.get("type") == "placeholder" else {"type": "chatmessage", **m}
        for m in prompt.prompt
        if not isinstance(m, str) and (placeholders or m.get("type") != "placeholder")
    ]
    data: dict[str, Any] = {
        "id": f"prompt-{name}",
        "createdAt": "2025-01-01T00:00:00.000Z",
        "updatedAt": "2025-01-01T00:00:00.000Z",
        "projectId": "project-bench",
        "createdBy": "API",
        "name": name,
        "version": prompt.version,
        "type": "chat",
        "prompt": messages,
        "config": dict(prompt.config),
        "labels": list(prompt.labels),
        "tags": [],
        "commitMessage": None,
        "resolutionGraph": None,
    }
    return json.dumps(data).encode()


class FakeLangfuse:
    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.fetches: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.fetches.values())

    def reset(self) -> None:
        with self._lock:
            self.fetches.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        raw = (scope.get("raw_path") or scope["path"].encode()).decode("ascii")
        name = urllib.parse.unquote(raw[len(PROMPTS_PATH) :])
        if raw.startswith(PROMPTS_PATH) and name.startswith("bench-"):
            with self._lock:
                self.fetches[name] += 1
            await anyio.sleep(self.latency)
            status, body = 200, langfuse_body(name)
        else:
            status, body = 404, b'{"error":"NotFoundError","message":"not found"}'
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


@contextmanager
def serving(app: FakeLangfuse) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port, in a thread; yields the base URL."""
    with running_server(app, backlog=4096) as url:
        yield url
