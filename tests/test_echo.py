"""The echo upstream (`serve --upstream echo`) on bodies the middleware rightly passes on.

A body nested deeper than the json module reads has no prompt reference the middleware could
use, so it goes on untouched; the echo upstream behind it answered that with a 500 (issue #16).
"""

from __future__ import annotations

import json

import pytest

from prompt_middleware import InMemoryRegistry, PromptMiddleware
from prompt_middleware.gateway.echo import EchoUpstream

from .helpers import asgi_call, openai_error, text_prompt

pytestmark = pytest.mark.anyio

DEEP = 100_000


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"model": "m", "x": ' + b"[" * DEEP + b"]" * DEEP + b"}", id="array"),
        pytest.param(
            b'{"model": "m", "x": ' + b'{"a":' * DEEP + b"1" + b"}" * DEEP + b"}", id="obj"
        ),
        pytest.param(b"[" * DEEP + b"]" * DEEP, id="top-level"),
    ],
)
async def test_a_body_too_deep_to_read_is_a_400_not_a_500(body: bytes, path: str) -> None:
    app = PromptMiddleware(EchoUpstream(), registry=InMemoryRegistry([text_prompt("p", "x")]))
    send = await asgi_call(app, body, path=path)
    openai_error(send, 400, "invalid_json")


@pytest.mark.parametrize("depth", [900, 950, 980, 1000])
async def test_a_body_read_near_the_limit_is_echoed(depth: int) -> None:
    """Read just within the recursion limit, it may be too deep to write a few frames lower:
    then the echo answers with the body as it came, never a 500."""
    body = b'{"model": "m", "x": ' + b"[" * depth + b"]" * depth + b"}"
    send = await asgi_call(EchoUpstream(pretty=False), body)
    if send.status == 400:  # deeper than this stack lets the json module read
        return
    assert send.status == 200
    content = json.loads(send.body)["choices"][0]["message"]["content"]
    assert content.replace(" ", "") == body.decode().replace(" ", "")
