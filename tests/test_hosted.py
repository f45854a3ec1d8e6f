"""OpenAI's hosted-prompt shape, `prompt: {id, version, variables}`, served from our registries.

Read by core/references.py, built by core/rewrite.py; driven by the official openai client.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.responses import (
    ResponseInputFileParam,
    ResponseInputImageParam,
    ResponseInputParam,
)

from prompt_middleware import FileRegistry, InMemoryRegistry, PromptMiddleware
from prompt_middleware.gateway.echo import EchoUpstream
from prompt_middleware.testing import CaptureApp, asgi_client, openai_client

from .helpers import chat_prompt, openai_error, text_prompt

pytestmark = pytest.mark.anyio

EXAMPLE_PROMPTS = Path(__file__).resolve().parent.parent / "examples" / "prompts"

IMAGE: ResponseInputImageParam = {
    "type": "input_image",
    "image_url": "https://example.com/cat.png",
    "detail": "low",
}
FILE: ResponseInputFileParam = {"type": "input_file", "file_id": "file-123"}

PROMPTS = [
    chat_prompt(
        "pmpt_trip",
        [{"role": "developer", "content": "Plan a trip to {{city}} for {{ traveller }}."}],
        config={"model": "gpt-4.1", "temperature": 0.3, "max_output_tokens": 200, "seed": 1},
    ),
    chat_prompt(
        "pmpt_trip",
        [{"role": "developer", "content": "v2: {{city}}"}],
        version=2,
        labels=("staging",),
    ),
    chat_prompt(
        "pmpt_vision",
        [
            {"role": "system", "content": "Describe the picture for {{audience}}."},
            {"role": "user", "content": " {{photo}} "},
        ],
    ),
    chat_prompt("pmpt_mixed", [{"role": "user", "content": "Look at {{photo}} please"}]),
    text_prompt("pmpt_text", "Answer in {{lang}}."),
]


@pytest.fixture
def middleware() -> PromptMiddleware:
    """The registry's hosted prompts in front of an echo upstream (replies show the request)."""
    return PromptMiddleware(EchoUpstream(), registry=InMemoryRegistry(PROMPTS))


def echoed_response(response: Any) -> dict[str, Any]:
    return dict(json.loads(response.output_text))


async def test_responses_create_with_hosted_prompt(middleware: PromptMiddleware) -> None:
    async with openai_client(middleware) as client:
        response = await client.responses.create(
            model="gpt-4o",
            prompt={"id": "pmpt_trip", "variables": {"city": "Lyon", "traveller": "Ada"}},
            input="Three days, please.",
            temperature=0.9,
        )
    sent = echoed_response(response)
    assert "prompt" not in sent
    assert sent["input"] == [
        {"role": "developer", "content": "Plan a trip to Lyon for Ada."},
        {"role": "user", "content": "Three days, please."},
    ]
    assert sent["model"] == "gpt-4.1"  # config.model replaces the request's
    assert sent["temperature"] == 0.9  # set by the request
    assert sent["max_output_tokens"] == 200  # filled from config
    assert "seed" not in sent  # not a Responses parameter


@pytest.mark.parametrize("version", ["2", 2])
async def test_versioned_id(version: Any, middleware: PromptMiddleware) -> None:
    async with openai_client(middleware) as client:
        response = await client.responses.create(
            model="m", prompt={"id": "pmpt_trip", "version": version, "variables": {"city": "Oslo"}}
        )
    assert echoed_response(response)["input"] == [{"role": "developer", "content": "v2: Oslo"}]


async def test_input_text_variables_and_item_list_input(middleware: PromptMiddleware) -> None:
    items: ResponseInputParam = [
        {"role": "user", "content": [{"type": "input_text", "text": "hi"}]}
    ]
    async with openai_client(middleware) as client:
        response = await client.responses.create(
            model="m",
            prompt={
                "id": "pmpt_trip",
                "variables": {
                    "city": {"type": "input_text", "text": "Rome"},
                    "traveller": "Bo",
                },
            },
            input=items,
        )
    assert echoed_response(response)["input"] == [
        {"role": "developer", "content": "Plan a trip to Rome for Bo."},
        *items,
    ]


async def test_image_variable_as_whole_message(middleware: PromptMiddleware) -> None:
    async with openai_client(middleware) as client:
        response = await client.responses.create(
            model="m",
            prompt={"id": "pmpt_vision", "variables": {"audience": "kids", "photo": IMAGE}},
        )
    assert echoed_response(response)["input"] == [
        {"role": "system", "content": "Describe the picture for kids."},
        {"role": "user", "content": [IMAGE]},
    ]


async def test_file_variable_as_whole_text_prompt_on_chat(capture: CaptureApp) -> None:
    registry = InMemoryRegistry([text_prompt("doc", "{{file}}")])
    async with asgi_client(PromptMiddleware(capture, registry=registry)) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": "m", "prompt": {"id": "doc", "variables": {"file": FILE}}},
        )
    assert response.status_code == 200
    assert capture.last.json["messages"] == [
        {"role": "user", "content": [{"type": "file", "file": {"file_id": "file-123"}}]}
    ]


async def test_image_variable_on_chat_uses_chat_part_shape(middleware: PromptMiddleware) -> None:
    async with openai_client(middleware) as client:
        result = await client.chat.completions.create(
            model="m",
            messages=[],
            extra_body={"prompt": {"id": "pmpt_vision", "variables": {"photo": IMAGE}}},
        )
    sent = json.loads(result.choices[0].message.content or "")
    assert sent["messages"][1] == {
        "role": "user",
        "content": [
            {
                "type": "image_url",
                "image_url": {"url": "https://example.com/cat.png", "detail": "low"},
            }
        ],
    }
    assert "prompt" not in sent


@pytest.mark.parametrize("value", [IMAGE, FILE])
async def test_part_variable_inside_text_is_400(
    value: ResponseInputImageParam | ResponseInputFileParam, middleware: PromptMiddleware
) -> None:
    async with openai_client(middleware) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await client.responses.create(
                model="m", prompt={"id": "pmpt_mixed", "variables": {"photo": value}}
            )
    openai_error(info.value, 400, "invalid_prompt_variables")
    assert "'photo'" in info.value.message
    assert "whole content" in info.value.message


async def test_streaming_passes_through(middleware: PromptMiddleware) -> None:
    async with openai_client(middleware) as client:
        stream = await client.responses.create(
            model="m",
            prompt={"id": "pmpt_text", "variables": {"lang": "Welsh"}},
            input="Hello",
            stream=True,
        )
        async with stream:
            events = [event async for event in stream]
    completed = [e for e in events if e.type == "response.completed"]
    assert len(completed) == 1
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert json.loads(deltas)["input"] == [
        {"role": "user", "content": "Answer in Welsh."},
        {"role": "user", "content": "Hello"},
    ]


async def test_litellm_fields_work_on_responses(middleware: PromptMiddleware) -> None:
    async with openai_client(middleware) as client:
        response = await client.responses.create(
            model="langfuse/gpt-4o",
            input="q",
            extra_body={"prompt_id": "pmpt_text", "prompt_variables": {"lang": "Irish"}},
        )
    sent = echoed_response(response)
    assert sent["model"] == "gpt-4o"
    assert sent["input"] == [
        {"role": "user", "content": "Answer in Irish."},
        {"role": "user", "content": "q"},
    ]


async def test_missing_hosted_prompt_is_404(middleware: PromptMiddleware) -> None:
    async with openai_client(middleware) as client:
        with pytest.raises(openai.NotFoundError) as info:
            await client.responses.create(model="m", prompt={"id": "pmpt_gone"})
    openai_error(info.value, 404, "prompt_not_found")


@pytest.mark.parametrize(
    ("prompt", "param"),
    [
        ({"id": ""}, "prompt.id"),
        ({"id": 5}, "prompt.id"),
        ({"id": "pmpt_trip", "version": "two"}, "prompt.version"),
        ({"id": "pmpt_trip", "version": 0}, "prompt.version"),
        ({"id": "pmpt_trip", "variables": ["a"]}, "prompt.variables"),
    ],
)
async def test_bad_hosted_reference_is_400(
    prompt: dict[str, Any], param: str, middleware: PromptMiddleware
) -> None:
    async with asgi_client(middleware) as client:
        response = await client.post("/v1/responses", json={"model": "m", "prompt": prompt})
    openai_error(response, 400, "invalid_prompt_request", param=param)


async def test_bad_input_type_is_400(middleware: PromptMiddleware) -> None:
    async with asgi_client(middleware) as client:
        response = await client.post(
            "/v1/responses", json={"model": "m", "prompt": {"id": "pmpt_text"}, "input": 3}
        )
    openai_error(response, 400, "invalid_prompt_request", param="input")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/responses", b'{"model": "m", "input": "no prompt here"}'),
        ("/v1/completions", b'{"model": "m", "prompt": "Say this is a test"}'),
        ("/v1/completions", b'{"model": "m", "prompt": {"id": "pmpt_text"}}'),
        ("/v1/chat/completions", b'{"model": "m", "prompt": "a string prompt is not ours"}'),
    ],
)
async def test_untouched_without_a_prompt_object(
    path: str, body: bytes, capture: CaptureApp
) -> None:
    async with asgi_client(PromptMiddleware(capture, registry=InMemoryRegistry(PROMPTS))) as client:
        response = await client.post(path, content=body)
    assert response.status_code == 200
    assert capture.last.body == body


async def test_readme_migration_example() -> None:
    """The README's before/after: the same call, served from examples/prompts/."""
    app = PromptMiddleware(EchoUpstream(), registry=FileRegistry(EXAMPLE_PROMPTS))
    async with openai_client(app, base_url="http://localhost:4000/v1") as client:
        response = await client.responses.create(
            model="gpt-4.1",
            prompt={
                "id": "pmpt_abc123",
                "version": "3",
                "variables": {"city": "Lyon", "traveller": "Ada"},
            },
            input="Three days, please.",
        )
    assert echoed_response(response) == {
        "model": "gpt-4.1",
        "temperature": 0.3,
        "max_output_tokens": 800,
        "input": [
            {"role": "developer", "content": "You plan trips to Lyon for Ada."},
            {"role": "user", "content": "Three days, please."},
        ],
    }
