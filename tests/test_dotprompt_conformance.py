"""The dotprompt conformance suite's rendering cases, served by FileRegistry through the middleware.

Each case's template becomes a `.prompt` file, its `input` the request's `prompt_variables`, its
`messages` (the conversation) the client's `messages`, its partials `_name.prompt` files; the
forwarded messages must be the case's expected messages in OpenAI's shape (`model` ->
`assistant`, text parts joined, media as `image_url` parts). Cases that need what a request
cannot carry (named schemas, tools, `@state` context, call-time options) are left to dotpromptz's
own suite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from prompt_middleware import FileRegistry, PromptMiddleware
from prompt_middleware.testing import CaptureApp, asgi_client

pytestmark = pytest.mark.anyio

SPEC = Path(__file__).parent / "dotprompt_spec"
_NEEDS_MORE = ("schemas", "tools")


def _cases() -> list[Any]:
    cases = []
    for file in sorted(SPEC.glob("*.yaml")):
        for suite in yaml.safe_load(file.read_text(encoding="utf-8")):
            if any(suite.get(key) for key in _NEEDS_MORE):
                continue
            for test in suite["tests"]:
                data = {**(suite.get("data") or {}), **(test.get("data") or {})}
                expected = test["expect"].get("messages")
                if expected is None or test.get("options") or data.get("context"):
                    continue
                case_id = f"{file.stem}:{suite['name']}:{test['desc']}"
                partials = {**suite.get("partials", {}), **suite.get("resolverPartials", {})}
                cases.append(pytest.param(suite["template"], partials, data, expected, id=case_id))
    return cases


CASES = _cases()


def test_the_suite_is_there() -> None:
    assert len(CASES) >= 40


def openai_message(message: dict[str, Any]) -> dict[str, Any]:
    parts = []
    for part in message["content"]:
        if "text" in part:
            parts.append({"type": "text", "text": part["text"]})
        elif "media" in part:
            parts.append({"type": "image_url", "image_url": {"url": part["media"]["url"]}})
    role = "assistant" if message["role"] == "model" else message["role"]
    if all(p["type"] == "text" for p in parts):
        return {"role": role, "content": "".join(p["text"] for p in parts)}
    return {"role": role, "content": parts}


@pytest.mark.parametrize(("template", "partials", "data", "expected"), CASES)
async def test_conformance_case(
    tmp_path: Path,
    template: str,
    partials: dict[str, str],
    data: dict[str, Any],
    expected: list[dict[str, Any]],
) -> None:
    (tmp_path / "case.prompt").write_text(template, encoding="utf-8")
    for name, source in partials.items():
        (tmp_path / f"_{name}.prompt").write_text(source, encoding="utf-8")
    app = CaptureApp()
    middleware = PromptMiddleware(app, FileRegistry(tmp_path))
    history = [openai_message(m) for m in data.get("messages") or []]
    body = {
        "model": "m",
        "prompt_id": "case",
        "prompt_variables": data.get("input") or {},
        "messages": history,
    }
    async with asgi_client(middleware) as client:
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert app.last.messages == [openai_message(m) for m in expected]
