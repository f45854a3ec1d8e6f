"""PromptMiddleware's own error answers: a registry that misbehaves in ways it should not.

A registry returning something that is not a `Prompt` is a 502 (never cached); an unexpected
exception is logged once with its traceback and answered OpenAI-shaped, without its details.
"""

from __future__ import annotations

import logging

import pytest

from prompt_middleware import (
    PromptMiddleware,
)
from prompt_middleware.testing import CaptureApp

from .helpers import (
    GatedRegistry,
    openai_error,
    post,
    text_prompt,
)

pytestmark = pytest.mark.anyio


GREET = text_prompt("greet", "Hello {{name}}!")


GREET_BODY = {"model": "m", "prompt_id": "greet", "prompt_variables": {"name": "A"}}


@pytest.mark.parametrize("cache_ttl", [0, 60])
async def test_registry_returning_a_non_prompt_is_502(
    cache_ttl: float, capture: CaptureApp
) -> None:
    registry = GatedRegistry(GREET)
    registry.garbage = {"name": "greet", "prompt": "a dict, not a Prompt"}
    mw = PromptMiddleware(capture, registry=registry, cache_ttl=cache_ttl)
    for calls in (1, 2):  # never cached
        err = openai_error(await post(mw, GREET_BODY), 502, "invalid_prompt")
        assert "'greet'" in err["message"]
        assert "dict" in err["message"]
        assert registry.calls == calls


@pytest.mark.parametrize(
    ("cache_ttl", "status", "code"),
    [(0, 500, "prompt_middleware_error"), (60, 503, "prompt_registry_unavailable")],
)
async def test_unexpected_exception_logged_once_with_traceback(
    caplog: pytest.LogCaptureFixture,
    cache_ttl: float,
    status: int,
    code: str,
    capture: CaptureApp,
) -> None:
    caplog.set_level(logging.DEBUG)
    registry = GatedRegistry(GREET)
    registry.error = ZeroDivisionError("internal-detail-42")
    mw = PromptMiddleware(capture, registry=registry, cache_ttl=cache_ttl)
    response = await post(mw, GREET_BODY)
    openai_error(response, status, code, type="server_error")
    assert "internal-detail-42" not in response.text
    assert "Traceback" not in response.text
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert logged[0].exc_info[1] is registry.error
    assert "internal-detail-42" in caplog.text
    assert "Traceback" in caplog.text
    assert capture.requests == []
