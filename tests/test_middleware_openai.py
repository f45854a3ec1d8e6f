"""PromptMiddleware added to a FastAPI app, driven by the official openai client in-process."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from prompt_middleware import FileRegistry, PromptMiddleware
from prompt_middleware.testing import openai_client

from .helpers import openai_error

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "prompts"


def completion(content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "test",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
    }


def chunk(content: str) -> bytes:
    payload = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "test",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return f"data: {json.dumps(payload)}\n\n".encode()


def build_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        echoed = json.dumps({"model": body["model"], "messages": body["messages"]})
        if body.get("stream"):

            async def events() -> AsyncIterator[bytes]:
                for i in range(0, len(echoed), 20):
                    yield chunk(echoed[i : i + 20])
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        prompt = request.state.prompt
        response = JSONResponse(completion(echoed))
        response.headers["x-seen-prompt"] = f"{prompt.name}@{prompt.version}"
        return response

    app.add_middleware(PromptMiddleware, registry=FileRegistry(EXAMPLES), cache_ttl=30)
    return app


async def test_prompt_id_through_extra_body() -> None:
    async with openai_client(build_app()) as api:
        raw = await api.chat.completions.with_raw_response.create(
            model="langfuse/gpt-4o",
            messages=[{"role": "user", "content": "My invoice is wrong"}],
            extra_body={"prompt_id": "support/triage", "prompt_variables": {"product": "Acme"}},
        )
    result = raw.parse()
    assert raw.headers["x-prompt-name"] == "support/triage"
    assert raw.headers["x-seen-prompt"] == "support/triage@2"
    sent = json.loads(result.choices[0].message.content or "")
    assert sent == {
        "model": "gpt-4o",
        "messages": [
            {
                "role": "system",
                "content": "You triage support tickets for Acme. "
                "Answer with one of: bug, billing, question.",
            },
            {"role": "user", "content": "My invoice is wrong"},
        ],
    }


async def test_streaming_with_prompt() -> None:
    async with openai_client(build_app()) as api:
        stream = await api.chat.completions.create(
            model="any",
            messages=[],
            stream=True,
            extra_body={
                "prompt_id": "greeting",
                "prompt_variables": {"name": "Bo", "language": "Danish"},
            },
        )
        async with stream:
            text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert json.loads(text)["messages"] == [
        {"role": "user", "content": "Say hello to Bo in Danish, in one short sentence."}
    ]


async def test_config_model_wins() -> None:
    async with openai_client(build_app()) as api:
        result = await api.chat.completions.create(
            model="gpt-4o",
            messages=[],
            extra_body={
                "prompt_id": "summarize",
                "prompt_variables": {"style": "terse", "words": 10, "text": "Long."},
            },
        )
    sent = json.loads(result.choices[0].message.content or "")
    assert sent["model"] == "gpt-4o-mini"


async def test_missing_prompt_raises_not_found() -> None:
    async with openai_client(build_app()) as api:
        with pytest.raises(openai.NotFoundError) as info:
            await api.chat.completions.create(
                model="m", messages=[], extra_body={"prompt_id": "does/not/exist"}
            )
    openai_error(info.value, 404, "prompt_not_found")


async def test_invalid_field_raises_bad_request() -> None:
    async with openai_client(build_app()) as api:
        with pytest.raises(openai.BadRequestError) as info:
            await api.chat.completions.create(
                model="m", messages=[], extra_body={"prompt_id": "greeting", "prompt_version": "x"}
            )
    openai_error(info.value, 400, "invalid_prompt_request", param="prompt_version")
