"""The `x-prompt-name` response header: any prompt name gives a valid, bounded header.

Names of every shape (folders, unicode, controls, NUL, traversal, 10,000 characters) from the
in-memory and file registries, raw-ASGI and through real uvicorn, which validates headers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from prompt_middleware import (
    FileRegistry,
    InMemoryRegistry,
    LangfuseRegistry,
    Prompt,
    PromptMiddleware,
    PromptRegistry,
)
from prompt_middleware.gateway.echo import EchoUpstream
from prompt_middleware.testing import CaptureApp

from .helpers import (
    asgi_call,
    chat_prompt,
    openai_error,
    text_prompt,
)
from .servers import running_server

pytestmark = pytest.mark.anyio


PROMPTS = [
    text_prompt("greet", "Hello {{name}}!"),
    chat_prompt(
        "support",
        [
            {"role": "system", "content": "You help with {{product}}."},
            {"type": "placeholder", "name": "history"},
        ],
    ),
]


NAMES = {
    "folder": "support/triage",
    "unicode": "日本語/プロンプト ☕",
    "spaces-around": " spaced name ",
    "controls": "tab\there\r\nnew\x7f",
    "nul": "a\x00b",
    "dots": "..",
    "traversal": "../../etc/passwd",
    "percent": "100%25 %zz",
    "10k-ascii": "n" * 10_000,
    "10k-unicode": "é☕" * 3_400,
}


def named_prompts() -> list[Prompt]:
    return [text_prompt(name, f"prompt #{i}") for i, name in enumerate(NAMES.values())]


def check_name_header(value: bytes, name: str) -> None:
    assert value.isascii()
    assert len(value) <= 1024
    text = unquote(value.decode("ascii"), errors="surrogatepass")
    if text != name:  # a long name, cut
        assert len(name) > 100
        assert text.endswith("…")
        assert name.startswith(text[:-1])
        assert len(text) > 100


@pytest.mark.parametrize("name", list(NAMES.values()), ids=list(NAMES))
async def test_any_prompt_name_makes_a_valid_header(name: str, capture: CaptureApp) -> None:
    mw = PromptMiddleware(capture, registry=InMemoryRegistry(named_prompts()))
    send = await asgi_call(mw, json.dumps({"prompt_id": name}).encode())
    assert send.status == 200
    headers = dict(send.messages[0]["headers"])
    check_name_header(headers[b"x-prompt-name"], name)
    assert capture.last.prompt.name == name


@pytest.mark.parametrize("name", list(NAMES.values()), ids=list(NAMES))
async def test_unknown_names_are_a_json_404(name: str, capture: CaptureApp) -> None:
    mw = PromptMiddleware(capture, registry=InMemoryRegistry(PROMPTS))
    send = await asgi_call(mw, json.dumps({"prompt_id": name}).encode())
    err = openai_error(send, 404, "prompt_not_found")
    assert err["param"] == "prompt_id"
    assert capture.requests == []


async def test_file_registry_names(tmp_path: Any, capture: CaptureApp) -> None:
    (tmp_path / "support").mkdir()
    (tmp_path / "support" / "café ☕.txt").write_text("Hi {{name}}", encoding="utf-8")
    (tmp_path / "secret.txt").write_text("TOP SECRET", encoding="utf-8")
    root = tmp_path / "support"
    mw = PromptMiddleware(capture, registry=FileRegistry(root))
    send = await asgi_call(mw, json.dumps({"prompt_id": "café ☕"}).encode())
    assert send.status == 200
    check_name_header(dict(send.messages[0]["headers"])[b"x-prompt-name"], "café ☕")
    for name in ["../secret", "/etc/passwd", "a\x00b", "x" * 10_000, "é/" * 3000, ".."]:
        send = await asgi_call(mw, json.dumps({"prompt_id": name}).encode())
        openai_error(send, 404, "prompt_not_found")
        assert b"TOP SECRET" not in send.body


UNSENDABLE = {
    "prompt_id": {"prompt_id": "x\ud800y"},
    "prompt_label": {"prompt_id": "greet", "prompt_label": "prod\udfff"},
    "prompt.id": {"prompt": {"id": "\ud800"}},
}


@pytest.mark.parametrize("cache_ttl", [60.0, 0.0], ids=["cached", "uncached"])
@pytest.mark.parametrize("field", list(UNSENDABLE))
@pytest.mark.parametrize("source", ["memory", "files", "langfuse"])
async def test_unsendable_names_are_the_clients_400_whatever_the_registry(
    field: str, source: str, cache_ttl: float, tmp_path: Any, capture: CaptureApp
) -> None:
    """A lone surrogate cannot travel as UTF-8: refused at the request boundary, before any
    registry is asked (Langfuse would otherwise fail as "unavailable", files answer 404)."""
    registries: dict[str, Callable[[], PromptRegistry]] = {
        "memory": lambda: InMemoryRegistry(named_prompts()),
        "files": lambda: FileRegistry(tmp_path),
        # Nothing listens there: a request that reached the registry would fail as a 503.
        "langfuse": lambda: LangfuseRegistry("pk-lf-x", "sk-lf-x", base_url="http://127.0.0.1:9"),
    }
    mw = PromptMiddleware(capture, registry=registries[source](), cache_ttl=cache_ttl)
    send = await asgi_call(mw, json.dumps(UNSENDABLE[field]).encode())
    openai_error(send, 400, "invalid_prompt_request", param=field)
    assert capture.requests == []


def test_names_through_a_real_server() -> None:
    """h11 validates response headers: every name must still give a well-formed response."""
    mw = PromptMiddleware(EchoUpstream(pretty=False), registry=InMemoryRegistry(named_prompts()))
    with running_server(mw) as url, httpx.Client(base_url=url) as client:
        for name in NAMES.values():
            body = json.dumps({"prompt_id": name}).encode()  # ASCII: escapes the surrogate
            response = client.post("/v1/chat/completions", content=body)
            assert response.status_code == 200, name
            raw = dict(response.headers.raw)
            check_name_header(raw[b"x-prompt-name"], name)
