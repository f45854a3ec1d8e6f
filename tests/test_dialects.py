"""A prompt's config written for either OpenAI API, translated for the one being called."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from prompt_middleware.core.dialects import translate_config
from prompt_middleware.testing import CaptureApp, openai_client

SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}}

# (Responses form, chat form) of one setting each.
PAIRS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "json_schema",
        {
            "text": {
                "format": {"type": "json_schema", "name": "r", "schema": SCHEMA, "strict": True}
            }
        },
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "r", "schema": SCHEMA, "strict": True},
            }
        },
    ),
    (
        "json_object",
        {"text": {"format": {"type": "json_object"}}},
        {"response_format": {"type": "json_object"}},
    ),
    ("verbosity", {"text": {"verbosity": "low"}}, {"verbosity": "low"}),
    ("max_tokens", {"max_output_tokens": 64}, {"max_completion_tokens": 64}),
    ("reasoning", {"reasoning": {"effort": "high"}}, {"reasoning_effort": "high"}),
    (
        "function_tools",
        {"tools": [{"type": "function", "name": "w", "parameters": PARAMETERS, "strict": True}]},
        {
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "w", "parameters": PARAMETERS, "strict": True},
                }
            ]
        },
    ),
    (
        "custom_tools",
        {"tools": [{"type": "custom", "name": "c", "description": "d"}]},
        {"tools": [{"type": "custom", "custom": {"name": "c", "description": "d"}}]},
    ),
    (
        "tool_choice",
        {"tool_choice": {"type": "function", "name": "w"}},
        {"tool_choice": {"type": "function", "function": {"name": "w"}}},
    ),
    (
        "allowed_tools",
        {
            "tool_choice": {
                "type": "allowed_tools",
                "mode": "auto",
                "tools": [{"type": "function", "name": "w"}],
            }
        },
        {
            "tool_choice": {
                "type": "allowed_tools",
                "allowed_tools": {
                    "mode": "auto",
                    "tools": [{"type": "function", "function": {"name": "w"}}],
                },
            }
        },
    ),
    ("shared", {"temperature": 0.3, "top_p": 0.9}, {"temperature": 0.3, "top_p": 0.9}),
]


@pytest.mark.parametrize(("responses", "chat"), [p[1:] for p in PAIRS], ids=[p[0] for p in PAIRS])
def test_each_setting_both_ways(responses: dict[str, Any], chat: dict[str, Any]) -> None:
    assert translate_config(responses, "chat") == chat
    assert translate_config(chat, "responses") == responses
    assert translate_config(chat, "chat") == chat
    assert translate_config(responses, "responses") == responses


def test_max_tokens_becomes_max_output_tokens() -> None:
    assert translate_config({"max_tokens": 10}, "responses") == {"max_output_tokens": 10}
    both = {"max_tokens": 10, "max_completion_tokens": 20}
    assert translate_config(both, "responses") == {"max_output_tokens": 20}


def test_the_target_apis_own_spelling_wins() -> None:
    config = {
        "max_output_tokens": 1,
        "max_completion_tokens": 2,
        "text": {"format": {"type": "json_object"}},
        "response_format": {"type": "text"},
    }
    assert translate_config(config, "chat") == {
        "max_completion_tokens": 2,
        "response_format": {"type": "text"},
    }
    merged = translate_config(
        {"reasoning": {"summary": "auto"}, "reasoning_effort": "low"}, "responses"
    )
    assert merged == {"reasoning": {"effort": "low", "summary": "auto"}}


def test_unknown_keys_never_come_out() -> None:
    config = {"model": "gpt-5", "supported_languages": ["en"], "temperature": 0}
    assert translate_config(config, "chat") == {"temperature": 0}
    assert translate_config(config, "responses") == {"temperature": 0}


def test_what_has_no_counterpart_is_dropped_with_a_debug_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    responses = {
        "include": ["reasoning.encrypted_content"],
        "truncation": "auto",
        "reasoning": {"effort": "low", "summary": "auto"},
        "tools": [{"type": "web_search"}, {"type": "function", "name": "f"}],
        "tool_choice": {"type": "web_search"},
    }
    with caplog.at_level(logging.DEBUG, "prompt_middleware.dialects"):
        chat = translate_config(responses, "chat")
    assert chat == {
        "reasoning_effort": "low",
        "tools": [{"type": "function", "function": {"name": "f"}}],
    }
    for what in ("include", "truncation", "reasoning.summary", "web_search"):
        assert what in caplog.text
    with caplog.at_level(logging.DEBUG, "prompt_middleware.dialects"):
        out = translate_config({"seed": 1, "stop": ["x"], "n": 2, "temperature": 1}, "responses")
    assert out == {"temperature": 1}
    assert "seed" in caplog.text


def test_malformed_settings_are_dropped_not_forwarded() -> None:
    assert translate_config({"text": "json"}, "chat") == {}
    assert translate_config({"text": {"format": {"type": "xml"}}}, "chat") == {}
    assert translate_config({"response_format": "json"}, "responses") == {}
    assert translate_config({"reasoning": "high"}, "chat") == {}


def test_the_config_is_not_changed() -> None:
    config = {"tools": [{"type": "function", "name": "w"}], "reasoning_effort": "low"}
    snapshot = repr(config)
    translate_config(config, "chat")
    translate_config(config, "responses")
    assert repr(config) == snapshot


MIGRATED = {  # an OpenAI hosted prompt as Langfuse's migration guide stores it
    "text": {"format": {"type": "json_schema", "name": "r", "schema": SCHEMA, "strict": True}},
    "max_output_tokens": 64,
    "tools": [{"type": "function", "name": "w", "parameters": PARAMETERS, "strict": False}],
    "reasoning": {"effort": "low"},
}
LANGFUSE_STYLE = {
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "r", "schema": SCHEMA, "strict": True},
    },
    "max_tokens": 64,
    "tools": [{"type": "function", "function": {"name": "w", "parameters": PARAMETERS}}],
    "reasoning_effort": "low",
}


@pytest.mark.anyio
async def test_the_official_client_sends_the_chat_form() -> None:
    app = CaptureApp()
    chat = translate_config(MIGRATED, "chat")
    async with openai_client(app) as client:
        # Typed parameters: a key the client does not know would be a TypeError here.
        await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], **chat
        )
    sent = app.last.json
    assert {k: sent[k] for k in chat} == chat


@pytest.mark.anyio
async def test_the_official_client_sends_the_responses_form() -> None:
    app = CaptureApp({"id": "resp_1", "object": "response", "output": [], "status": "completed"})
    responses = translate_config(LANGFUSE_STYLE, "responses")
    async with openai_client(app) as client:
        await client.responses.create(model="m", input="hi", **responses)
    sent = app.last.json
    assert {k: sent[k] for k in responses} == responses
    assert sent["text"]["format"]["type"] == "json_schema"
