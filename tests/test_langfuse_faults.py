"""LangfuseRegistry failures, through the middleware and its cache.

Langfuse answering 5xx, 429, malformed prompts or nothing at all: a stale copy is served where the
cache has one, otherwise a 503 (502 for a malformed prompt), naming the prompt and never a secret.
A flapping Langfuse never fails a request once the prompt is cached, and logs once per streak.
"""

from __future__ import annotations

import gzip
import logging
from typing import Any

import pytest

from prompt_middleware import (
    CachedRegistry,
    LangfuseRegistry,
    PromptMiddleware,
)
from prompt_middleware.registries.langfuse import DEFAULT_MAX_RESPONSE_SIZE
from prompt_middleware.testing import CaptureApp

from .fake_langfuse import FakeLangfuse
from .helpers import (
    Clock,
    GatedRegistry,
    openai_error,
    post,
    settle,
    text_prompt,
)
from .servers import free_port

pytestmark = pytest.mark.anyio


PK, SK = "pk-lf-faults", "sk-lf-faults-secret"


PK, SK = "pk-lf-faults", "sk-lf-faults-secret"


GREET = text_prompt("greet", "Hello {{name}}!")


GREET_BODY = {"model": "m", "prompt_id": "greet", "prompt_variables": {"name": "A"}}


HELLO = [{"role": "user", "content": "Hello A!"}]


@pytest.fixture
def fake(clean_fake: FakeLangfuse) -> FakeLangfuse:
    clean_fake.add_prompt(PK, SK, "greet", "Hello {{name}}!")
    return clean_fake


def langfuse(url: str, **kwargs: Any) -> LangfuseRegistry:
    return LangfuseRegistry(PK, SK, base_url=url, max_retries=0, **kwargs)


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


MALFORMED = {
    "not-json": b"<html>502 Bad Gateway</html>",
    "not-an-object": [1, 2],
    "missing-fields": {"name": "greet", "version": 1},
    "version-is-a-string": {"name": "greet", "version": "1", "type": "text", "prompt": "x"},
    "text-prompt-not-a-string": {"name": "greet", "version": 1, "type": "text", "prompt": 5},
    "chat-content-not-a-string": {
        "name": "greet",
        "version": 1,
        "type": "chat",
        "prompt": [{"role": "system", "content": {"text": "hi"}}],
    },
    "chat-message-not-an-object": {"name": "greet", "version": 1, "type": "chat", "prompt": [7]},
    "unknown-type": {"name": "greet", "version": 1, "type": "image", "prompt": "x"},
    "labels-not-strings": {
        "name": "greet",
        "version": 1,
        "type": "text",
        "prompt": "x",
        "labels": [1],
    },
    # Hostile answers (issue #16, item 9): the registry's fault, never the client's or a 500.
    "nested-past-the-recursion-limit": b'{"name": "greet", "version": 1, "type": "text", '
    b'"prompt": "x", "config": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"}",
    "nan-in-config": b'{"name": "greet", "version": 1, "type": "text", "prompt": "x", '
    b'"config": {"temperature": NaN}}',
    "infinity-in-config": b'{"name": "greet", "version": 1, "type": "text", "prompt": "x", '
    b'"config": {"temperature": 1e400}}',
    "config-nested-deeply": {
        "name": "greet",
        "version": 1,
        "type": "text",
        "prompt": "x",
        "config": _nested(100),
    },
}


FAULTS: dict[str, tuple[int, Any, dict[str, str], int, str]] = {
    "500": (500, None, {}, 503, "prompt_registry_unavailable"),
    "503": (503, None, {}, 503, "prompt_registry_unavailable"),
    "429": (429, None, {"retry-after": "0"}, 503, "prompt_registry_unavailable"),
    **{
        f"malformed-{name}": (200, body, {}, 502, "invalid_prompt")
        for name, body in MALFORMED.items()
    },
}


@pytest.mark.parametrize("fault", list(FAULTS.values()), ids=list(FAULTS))
async def test_registry_fault_without_a_cached_copy(
    fake: FakeLangfuse,
    served: tuple[FakeLangfuse, str],
    fault: tuple[Any, ...],
    capture: CaptureApp,
) -> None:
    status, body, headers, expected, code = fault
    mw = PromptMiddleware(capture, registry=langfuse(served[1]))
    fake.fail_next(1, status, headers=headers, body=body)
    response = await post(mw, GREET_BODY)
    err = openai_error(response, expected, code)
    assert "greet" in err["message"]  # names the prompt
    assert SK not in response.text
    assert capture.requests == []
    # Nothing was cached from the failure: the next request fetches and succeeds.
    assert (await post(mw, GREET_BODY)).status_code == 200
    assert capture.last.json["messages"] == HELLO
    await mw.aclose()


@pytest.mark.parametrize("fault", list(FAULTS.values()), ids=list(FAULTS))
async def test_registry_fault_with_a_stale_copy_serves_it(
    fake: FakeLangfuse,
    served: tuple[FakeLangfuse, str],
    fault: tuple[Any, ...],
    capture: CaptureApp,
) -> None:
    status, body, headers, *_ = fault
    clock = Clock()
    cache = CachedRegistry(langfuse(served[1]), ttl=10, clock=clock)
    mw = PromptMiddleware(capture, registry=cache)
    assert (await post(mw, GREET_BODY)).status_code == 200
    clock.now += 11
    fake.fail_next(1, status, headers=headers, body=body)
    assert (await post(mw, GREET_BODY)).status_code == 200
    await settle(lambda: cache.stats.fetch_errors == 1)
    assert (await post(mw, GREET_BODY)).status_code == 200
    assert [c.json["messages"] for c in capture.requests] == [HELLO] * 3
    await mw.aclose()


async def test_an_answer_past_max_response_size_is_the_registrys_fault(
    fake: FakeLangfuse, served: tuple[FakeLangfuse, str], capture: CaptureApp
) -> None:
    fake.add_prompt(PK, SK, "big", "x" * 20_000)
    mw = PromptMiddleware(capture, registry=langfuse(served[1], max_response_size=8192))
    response = await post(mw, {"model": "m", "prompt_id": "big"})
    err = openai_error(response, 502, "invalid_prompt")
    assert "'big'" in err["message"]
    assert "8192 bytes" in err["message"]
    assert capture.requests == []
    assert (await post(mw, GREET_BODY)).status_code == 200  # a prompt under the cap loads
    await mw.aclose()


async def test_a_compressed_answer_is_capped_once_decompressed(
    fake: FakeLangfuse, served: tuple[FakeLangfuse, str], capture: CaptureApp
) -> None:
    # 64 KiB on the wire, 8 MB inflated: refused at the 5 MB default while it is read.
    bomb = b'{"name": "greet", "version": 1, "type": "text", "prompt": "' + b" " * 8_000_000
    body = gzip.compress(bomb + b'"}')
    fake.fail_next(1, 200, headers={"content-encoding": "gzip"}, body=body)
    mw = PromptMiddleware(capture, registry=langfuse(served[1]))
    err = openai_error(await post(mw, GREET_BODY), 502, "invalid_prompt")
    assert str(DEFAULT_MAX_RESPONSE_SIZE) in err["message"]
    await mw.aclose()


def test_max_response_size_and_max_connections_must_be_positive() -> None:
    assert DEFAULT_MAX_RESPONSE_SIZE == 5 * 2**20
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="max_response_size"):
            LangfuseRegistry(PK, SK, max_response_size=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="max_connections"):
            LangfuseRegistry(PK, SK, max_connections=bad)  # type: ignore[arg-type]


async def test_registry_connection_refused(
    caplog: pytest.LogCaptureFixture, capture: CaptureApp
) -> None:
    clock = Clock()
    url = f"http://127.0.0.1:{free_port()}"
    registry = GatedRegistry(GREET)
    cache = CachedRegistry(registry, ttl=10, clock=clock)
    mw = PromptMiddleware(capture, registry=cache)
    assert (await post(mw, GREET_BODY)).status_code == 200
    # The same cache, now in front of a Langfuse nobody listens for.
    cache.registry = langfuse(url)
    clock.now += 11
    assert (await post(mw, GREET_BODY)).status_code == 200  # stale
    await settle(lambda: cache.stats.fetch_errors == 1)
    # Without a copy: 503 saying what failed, not how (no URL credentials, no secret).
    cold = PromptMiddleware(capture, registry=langfuse(url))
    err = openai_error(await post(cold, GREET_BODY), 503, "prompt_registry_unavailable")
    assert "ConnectError" in err["message"]
    assert "'greet'" in err["message"]
    assert SK not in caplog.text
    await cold.aclose()
    await mw.aclose()


async def test_flapping_registry_never_fails_a_request_once_cached(
    fake: FakeLangfuse,
    served: tuple[FakeLangfuse, str],
    caplog: pytest.LogCaptureFixture,
    capture: CaptureApp,
) -> None:
    caplog.set_level(logging.INFO, logger="prompt_middleware")
    clock = Clock()
    cache = CachedRegistry(langfuse(served[1]), ttl=10, negative_ttl=0, clock=clock)
    mw = PromptMiddleware(capture, registry=cache)
    fake.fail_next(1, 503)
    openai_error(
        await post(mw, GREET_BODY), 503, "prompt_registry_unavailable"
    )  # nothing cached yet
    pattern = [503, 200, 500, 429, 200, 200, 503, 200]
    for round_, status in enumerate(pattern, 1):
        assert (await post(mw, GREET_BODY)).status_code == 200, round_
        clock.now += 11
        if status != 200:
            fake.fail_next(1, status, headers={"retry-after": "0"})
        assert (await post(mw, GREET_BODY)).status_code == 200, round_
        # This round's refresh has been made and has ended (else the next round's fault
        # would go to it, and the next stale hit would find it still running).
        await settle(lambda n=round_ + 2: cache.stats.fetches == n and not cache._inflight)
    assert cache.stats.fetch_errors == 1 + sum(s != 200 for s in pattern)
    assert all(c.json["messages"] == HELLO for c in capture.requests)
    assert len(capture.requests) == 2 * len(pattern)
    # One warning per failure streak, one "answers again" per recovery.
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    recovered = [r for r in caplog.records if "answers again" in r.getMessage()]
    assert len(warnings) == 4
    assert len(recovered) == 4
    await mw.aclose()
