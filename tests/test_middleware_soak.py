"""A bounded soak of PromptMiddleware: thousands of mixed requests while the cache keeps expiring.

Marked `soak` and deselected by default; run with `./scripts/test -m soak` (docs/testing.md).

Two gateways, `PromptMiddleware` in front of `EchoUpstream`, each with a 50 ms cache TTL so prompts
are refreshed in the background all the time:

- one served by real uvicorn on 127.0.0.1 (asyncio, in a thread), driven over TCP;
- one in-process with its lifespan running, on the test's own backend (so trio runs it too).

Traffic mixes text and chat prompts, client messages filling a placeholder, SSE streaming, the
Responses API with a hosted-prompt reference, a model alias, gzip bodies, plain pass-through and
expected 400/404s. Every response must be exactly what its own request asked for (each request
carries a unique token), none may fail unexpectedly, and memory must stay flat between two
warmed-up phases. About 5 s per backend.
"""

from __future__ import annotations

import gc
import gzip
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest

from prompt_middleware import CachedRegistry, InMemoryRegistry, PromptMiddleware
from prompt_middleware.gateway.echo import EchoUpstream
from prompt_middleware.testing import asgi_client

from .helpers import chat_prompt, openai_error, text_prompt
from .servers import running_server

pytestmark = [pytest.mark.anyio, pytest.mark.soak]

TTL = 0.05
CONCURRENCY = 16
# requests per phase: (over HTTP, in-process)
WARM_UP, MEASURED = (250, 600), (500, 1500)

PROMPTS = [
    *(text_prompt(f"text-{k}", f"[{k}] Hi {{{{name}}}}, token {{{{token}}}}") for k in range(6)),
    chat_prompt(
        "chat",
        [
            {"role": "system", "content": "Support for {{product}} ({{token}})"},
            {"type": "placeholder", "name": "history"},
        ],
        config={"model": "chat-model", "temperature": 0.3},
    ),
    text_prompt("pmpt_hosted", "Hosted {{name}} {{token}}", version=3),
]
ALIASES = {"smart": {"prompt_id": "text-0", "model": "real-model"}}


@dataclass
class Case:
    path: str
    body: dict[str, Any]
    check: Callable[[httpx.Response], None]
    headers: dict[str, str] | None = None
    gzip: bool = False
    stream: bool = False


def echoed_chat(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    content = response.json()["choices"][0]["message"]["content"]
    echoed: dict[str, Any] = json.loads(content)
    return echoed


def streamed_chat(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    text = ""
    events = [e for e in response.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    for event in events[:-1]:
        chunk = json.loads(event.removeprefix("data: "))
        for choice in chunk["choices"]:
            text += choice["delta"].get("content") or ""
    echoed: dict[str, Any] = json.loads(text)
    return echoed


CHAT = "/v1/chat/completions"
Check = Callable[[httpx.Response], None]


def text_check(k: int, name: str, token: str, model: str = "m") -> Check:
    def check(response: httpx.Response) -> None:
        echoed = echoed_chat(response)
        assert echoed["messages"] == [
            {"role": "user", "content": f"[{k}] Hi {name}, token {token}"}
        ]
        assert echoed["model"] == model
        assert echoed["user"] == token
        assert response.headers["x-prompt-name"] == f"text-{k}"

    return check


def text_case(i: int, name: str, token: str) -> Case:
    k = i % 6
    body: dict[str, Any] = {"model": "m", "prompt_id": f"text-{k}", "user": token}
    body["prompt_variables"] = {"name": name, "token": token}
    return Case(CHAT, body, text_check(k, name, token))


def chat_case(i: int, name: str, token: str) -> Case:
    history = [{"role": "user", "content": f"question {token}"}]
    body = {
        "model": "m",
        "prompt_id": "chat",
        "prompt_variables": {"product": name, "token": token},
        "messages": history,
    }

    def chat_check(response: httpx.Response) -> None:
        echoed = echoed_chat(response)
        assert echoed["messages"] == [
            {"role": "system", "content": f"Support for {name} ({token})"},
            *history,
        ]
        assert (echoed["model"], echoed["temperature"]) == ("chat-model", 0.3)

    return Case(CHAT, body, chat_check)


def stream_case(i: int, name: str, token: str) -> Case:
    k = i % 6
    body: dict[str, Any] = {"model": "m", "prompt_id": f"text-{k}", "user": token, "stream": True}
    body["prompt_variables"] = {"name": name, "token": token}

    def stream_check(response: httpx.Response) -> None:
        echoed = streamed_chat(response)
        assert echoed["messages"][0]["content"] == f"[{k}] Hi {name}, token {token}"
        assert echoed["user"] == token

    return Case(CHAT, body, stream_check, stream=True)


def responses_case(i: int, name: str, token: str) -> Case:
    body = {
        "model": "m",
        "prompt": {"id": "pmpt_hosted", "version": "3", "variables": {"name": name}},
        "input": f"and {token}",
    }

    def responses_check(response: httpx.Response) -> None:
        assert response.status_code == 200, response.text
        text = response.json()["output"][0]["content"][0]["text"]
        echoed = json.loads(text)
        assert echoed["input"] == [
            {"role": "user", "content": f"Hosted {name} {{{{token}}}}"},
            {"role": "user", "content": f"and {token}"},
        ]

    return Case("/v1/responses", body, responses_check)


def alias_case(i: int, name: str, token: str) -> Case:
    body: dict[str, Any] = {"model": "smart", "prompt_variables": {"name": name, "token": token}}
    body["user"] = token
    return Case(CHAT, body, text_check(0, name, token, model="real-model"))


def gzip_case(i: int, name: str, token: str) -> Case:
    k = i % 6
    body: dict[str, Any] = {"model": "m", "prompt_id": f"text-{k}", "user": token}
    body["prompt_variables"] = {"name": name, "token": token}
    return Case(CHAT, body, text_check(k, name, token), gzip=True)


def plain_case(i: int, name: str, token: str) -> Case:
    body = {"model": "m", "messages": [{"role": "user", "content": f"plain prompt {token}"}]}

    def plain_check(response: httpx.Response) -> None:
        assert echoed_chat(response) == body
        assert "x-prompt-name" not in response.headers

    return Case(CHAT, body, plain_check)


def error_case(i: int, name: str, token: str) -> Case:
    """Expected errors: an unknown prompt (negative-cached) and a malformed field."""
    body: dict[str, Any]
    if i % 20 == 9:
        body = {"model": "m", "prompt_id": f"missing-{i % 3}"}
        expected = (404, "prompt_not_found")
    else:
        body = {"model": "m", "prompt_id": "text-1", "prompt_variables": [token]}
        expected = (400, "invalid_prompt_request")

    def error_check(response: httpx.Response) -> None:
        openai_error(response, *expected)

    return Case(CHAT, body, error_check)


# Request i is of kind KINDS[i % 10].
KINDS: list[Callable[[int, str, str], Case]] = [
    *(text_case,) * 3,
    chat_case,
    stream_case,
    responses_case,
    alias_case,
    gzip_case,
    plain_case,
    error_case,
]


def case(i: int) -> Case:
    """Request number `i` of the mix, with what its response must show."""
    return KINDS[i % 10](i, f"user{i}", f"tok-{i}-{os.urandom(3).hex()}")


async def drive(client: httpx.AsyncClient, start: int, count: int, failures: list[str]) -> None:
    limiter = anyio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        item = case(i)
        content = json.dumps(item.body).encode()
        headers = {"content-type": "application/json", **(item.headers or {})}
        if item.gzip:
            content = gzip.compress(content)
            headers["content-encoding"] = "gzip"
        async with limiter:
            try:
                response = await client.post(item.path, content=content, headers=headers)
                item.check(response)
            except Exception as exc:  # collected: one failure must not hide the others
                failures.append(f"request {i}: {type(exc).__name__}: {exc}"[:500])

    async with anyio.create_task_group() as tg:
        for i in range(start, start + count):
            tg.start_soon(one, i)


def memory() -> tuple[int, int]:
    """(GC-tracked objects, resident set size in bytes), after a full collection."""
    gc.collect()
    with open("/proc/self/statm") as statm:
        rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return len(gc.get_objects()), rss


def gateway() -> tuple[PromptMiddleware, CachedRegistry]:
    # A short fetch_timeout keeps trio's deadline heap (stale entries until they expire) small.
    cache = CachedRegistry(InMemoryRegistry(PROMPTS), ttl=TTL, negative_ttl=TTL, fetch_timeout=0.5)
    mw = PromptMiddleware(
        EchoUpstream(pretty=False, chunks=3), registry=cache, model_prompts=ALIASES
    )
    return mw, cache


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc for RSS")
async def test_soak_mixed_traffic_zero_errors_no_cross_talk_flat_memory() -> None:
    served, served_cache = gateway()
    local, local_cache = gateway()
    failures: list[str] = []
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    samples: list[tuple[int, int]] = []
    counted = 0
    with running_server(served) as url:
        async with (
            httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as remote,
            asgi_client(local) as inproc,
        ):
            start = 0
            for phase, (over_http, in_process) in enumerate((WARM_UP, MEASURED, MEASURED)):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(drive, remote, start, over_http, failures)
                    tg.start_soon(drive, inproc, start + over_http, in_process, failures)
                start += over_http + in_process
                assert failures == [], failures[:5]
                await anyio.sleep(2 * TTL)  # let the last refreshes finish
                samples.append(memory())
                if phase == 2:
                    counted = over_http + in_process

    assert failures == []
    # The caches really expired and refreshed meanwhile, and kept within their bounds.
    for cache in (served_cache, local_cache):
        stats = cache.stats
        assert stats.refreshes > 20, stats
        assert stats.stale_served > 20, stats
        assert stats.fetch_errors == 0, stats
        assert stats.entries <= len(PROMPTS) + 3
        assert not cache._inflight
    # Memory is flat once warm: the second measured phase adds next to nothing.
    (_, _), (objects_b, rss_b), (objects_c, rss_c) = samples
    assert objects_c - objects_b < 1000 + counted // 4, (objects_b, objects_c)
    assert rss_c - rss_b < 16 * 2**20, (rss_b, rss_c)
