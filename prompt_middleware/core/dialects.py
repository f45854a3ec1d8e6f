"""A prompt's `config` written for either OpenAI API, made right for the one being called.

Prompts migrated from OpenAI's hosted prompts carry Responses-API settings (`text.format`,
`max_output_tokens`, flat function tools, `reasoning`); Langfuse's docs write chat-completion ones
(`response_format`, `max_tokens`, nested tools). `translate_config(config, "chat")` returns the
config's chat-completion parameters, translating Responses-style keys; `"responses"` the reverse.
Only parameters of the target API come out (unknown keys never do); a setting of the other API
that has no counterpart is dropped with a debug log. Where both spellings of one setting are
present, the target API's own wins. Values not translated are passed on as they are (not copied).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Literal

__all__ = ["CHAT_CONFIG_PARAMS", "RESPONSES_CONFIG_PARAMS", "Api", "translate_config"]

logger = logging.getLogger("prompt_middleware.dialects")

Api = Literal["chat", "responses"]

# Chat-completion parameters a prompt's `config` may supply when the request leaves them unset.
CHAT_CONFIG_PARAMS = frozenset(
    {
        "audio",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "modalities",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "reasoning_effort",
        "response_format",
        "seed",
        "service_tier",
        "stop",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "verbosity",
        "web_search_options",
    }
)

# The same for the Responses API.
RESPONSES_CONFIG_PARAMS = frozenset(
    {
        "include",
        "max_output_tokens",
        "max_tool_calls",
        "parallel_tool_calls",
        "reasoning",
        "service_tier",
        "store",
        "temperature",
        "text",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "truncation",
    }
)

_OWN: dict[Api, frozenset[str]] = {"chat": CHAT_CONFIG_PARAMS, "responses": RESPONSES_CONFIG_PARAMS}
# Keys of the other API only, and every key that may need translating.
_FOREIGN: dict[Api, frozenset[str]] = {
    "chat": RESPONSES_CONFIG_PARAMS - CHAT_CONFIG_PARAMS,
    "responses": CHAT_CONFIG_PARAMS - RESPONSES_CONFIG_PARAMS,
}
_TRIGGERS = {api: keys | {"tools", "tool_choice"} for api, keys in _FOREIGN.items()}
_API_NAMES: dict[Api, str] = {"chat": "chat completions", "responses": "Responses requests"}
_Config = dict[str, Any]
_Translate = Callable[[Mapping[str, Any], _Config], None]


def only_filters(config: Mapping[str, Any], api: Api) -> bool:
    """Whether `translate_config(config, api)` only keeps `api`'s own keys (translates and logs
    nothing), so its answer for a prompt's config can be kept."""
    return _TRIGGERS[api].isdisjoint(config)


def translate_config(config: Mapping[str, Any], api: Api) -> dict[str, Any]:
    """The parameters of `api` ("chat" or "responses") that `config` sets, in that API's form."""
    own = _OWN[api]
    out = {key: value for key, value in config.items() if key in own}
    if only_filters(config, api):  # the usual case: nothing to translate
        return out
    foreign = [key for key in config if key in _FOREIGN[api]]
    if not foreign and not _needs_tool_rewrite(config.get("tools"), config.get("tool_choice"), api):
        return out
    translated: _Config = {}
    for key in foreign:
        translate = _TRANSLATIONS[api].get(key)
        if translate is None:
            _dropped(key, f"{_API_NAMES[api]} have no counterpart")
        else:
            translate(config, translated)
    if "tools" in out:
        out["tools"] = _convert_tools(out["tools"], api)
    if "tool_choice" in out:
        choice = _convert_tool_choice(out["tool_choice"], api)
        if choice is None:
            del out["tool_choice"]
        else:
            out["tool_choice"] = choice
    for key, value in translated.items():  # the target's own spelling wins
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = {**value, **out[key]}  # e.g. `reasoning` from reasoning_effort + own
    return out


# -- Responses -> chat ------------------------------------------------------------------------


def _max_output_tokens(config: Mapping[str, Any], out: _Config) -> None:
    out["max_completion_tokens"] = config["max_output_tokens"]


def _text(config: Mapping[str, Any], out: _Config) -> None:
    text = config["text"]
    if not isinstance(text, Mapping):
        _dropped("text", "it is not an object")
        return
    for key, value in text.items():
        if key == "format":
            response_format = _format_to_chat(value)
            if response_format is None:
                _dropped("text.format", "it is not a json_schema, json_object or text format")
            else:
                out["response_format"] = response_format
        elif key == "verbosity":
            out["verbosity"] = value
        else:
            _dropped(f"text.{key}", "chat completions have no counterpart")


def _format_to_chat(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        return None
    kind = value.get("type")
    if kind == "json_schema":
        return {
            "type": "json_schema",
            "json_schema": {k: v for k, v in value.items() if k != "type"},
        }
    if kind in ("json_object", "text"):
        return {"type": kind}
    return None


def _reasoning(config: Mapping[str, Any], out: _Config) -> None:
    reasoning = config["reasoning"]
    if not isinstance(reasoning, Mapping):
        _dropped("reasoning", "it is not an object")
        return
    for key, value in reasoning.items():
        if key == "effort":
            out["reasoning_effort"] = value
        else:
            _dropped(f"reasoning.{key}", "chat completions have no counterpart")


# -- chat -> Responses ------------------------------------------------------------------------


def _max_tokens(config: Mapping[str, Any], out: _Config) -> None:
    # max_completion_tokens is the newer name of the same limit: it wins over max_tokens.
    if "max_completion_tokens" in config:
        out["max_output_tokens"] = config["max_completion_tokens"]
    else:
        out["max_output_tokens"] = config["max_tokens"]


def _response_format(config: Mapping[str, Any], out: _Config) -> None:
    value = config["response_format"]
    text_format = _format_to_responses(value)
    if text_format is None:
        _dropped("response_format", "it is not a json_schema, json_object or text format")
        return
    out.setdefault("text", {})["format"] = text_format


def _format_to_responses(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        return None
    kind = value.get("type")
    if kind == "json_schema" and isinstance(value.get("json_schema"), Mapping):
        return {"type": "json_schema", **value["json_schema"]}
    if kind in ("json_object", "text"):
        return {"type": kind}
    return None


def _verbosity(config: Mapping[str, Any], out: _Config) -> None:
    out.setdefault("text", {})["verbosity"] = config["verbosity"]


def _reasoning_effort(config: Mapping[str, Any], out: _Config) -> None:
    out.setdefault("reasoning", {})["effort"] = config["reasoning_effort"]


_TRANSLATIONS: dict[Api, dict[str, _Translate]] = {
    "chat": {
        "max_output_tokens": _max_output_tokens,
        "text": _text,
        "reasoning": _reasoning,
    },
    "responses": {
        "max_tokens": _max_tokens,
        "max_completion_tokens": _max_tokens,
        "response_format": _response_format,
        "verbosity": _verbosity,
        "reasoning_effort": _reasoning_effort,
    },
}


# -- tools and tool_choice (a key of both APIs, shaped differently) ---------------------------

# Chat nests a function or custom tool's fields under its type; Responses has them flat.
_NESTED_TOOL_TYPES = ("function", "custom")


def _needs_tool_rewrite(tools: Any, tool_choice: Any, api: Api) -> bool:
    if isinstance(tools, list) and any(_is_foreign_tool(t, api) for t in tools):
        return True
    return _is_foreign_tool(tool_choice, api) or (
        isinstance(tool_choice, Mapping) and tool_choice.get("type") == "allowed_tools"
    )


def _is_foreign_tool(tool: Any, api: Api) -> bool:
    if not isinstance(tool, Mapping):
        return False
    kind = tool.get("type")
    if kind in _NESTED_TOOL_TYPES:
        nested = isinstance(tool.get(kind), Mapping)
        return nested if api == "responses" else not nested
    # A hosted Responses tool (web_search, file_search, mcp, ...) has no chat counterpart.
    return api == "chat"


def _convert_tools(tools: Any, api: Api) -> Any:
    if not isinstance(tools, list):
        return tools
    out = []
    for tool in tools:
        converted = _convert_tool(tool, api)
        if converted is None:
            kind = tool.get("type") if isinstance(tool, Mapping) else type(tool).__name__
            _dropped(f"a {kind!s} tool", "chat completions have no counterpart")
        else:
            out.append(converted)
    return out


def _convert_tool(tool: Any, api: Api) -> Any:
    if not _is_foreign_tool(tool, api):
        return tool
    kind = tool.get("type")
    if kind is None:  # not a tool either API knows: passed on as written
        return tool
    if kind not in _NESTED_TOOL_TYPES:
        return None
    if api == "chat":
        return {"type": kind, kind: {k: v for k, v in tool.items() if k != "type"}}
    return {"type": kind, **tool[kind]}


def _convert_tool_choice(choice: Any, api: Api) -> Any:
    """The tool_choice in `api`'s form; None when it names a tool `api` does not have."""
    if not isinstance(choice, Mapping):
        return choice  # "auto", "none", "required" mean the same in both
    if choice.get("type") == "allowed_tools":
        return _convert_allowed_tools(choice, api)
    if not _is_foreign_tool(choice, api):
        return choice
    converted = _convert_tool(choice, api)
    if converted is None:
        _dropped(f"tool_choice {choice.get('type')!s}", "chat completions have no counterpart")
    return converted


def _convert_allowed_tools(choice: Mapping[str, Any], api: Api) -> Any:
    # Chat: {"type": "allowed_tools", "allowed_tools": {"mode", "tools"}}; Responses: flat.
    if api == "chat":
        if isinstance(choice.get("allowed_tools"), Mapping):
            return choice
        body = {k: v for k, v in choice.items() if k != "type"}
        if isinstance(body.get("tools"), list):
            body["tools"] = _convert_tools(body["tools"], api)
        return {"type": "allowed_tools", "allowed_tools": body}
    inner = choice.get("allowed_tools")
    if not isinstance(inner, Mapping):
        return choice
    body = dict(inner)
    if isinstance(body.get("tools"), list):
        body["tools"] = _convert_tools(body["tools"], api)
    return {"type": "allowed_tools", **body}


def _dropped(what: str, why: str) -> None:
    logger.debug("Prompt config: dropped %s (%s)", what, why)
