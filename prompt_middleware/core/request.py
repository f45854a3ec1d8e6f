"""Reading the prompt fields of a request body, and building the body that is forwarded.

Pure functions over bytes and dicts, so every rule can be tested without ASGI.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ._json import dump_json, finite, load_object
from .errors import InvalidPromptRequest, MissingVariables, RequestCredentialsDisabled
from .hosted import fill_parts, read_hosted_reference, split_variables
from .prompts import Prompt, PromptRef

__all__ = [
    "CHAT_CONFIG_PARAMS",
    "CREDENTIAL_FIELDS",
    "PROMPT_FIELDS",
    "Credentials",
    "ModelPrompt",
    "PromptRequest",
    "RESPONSES_CONFIG_PARAMS",
    "RewriteOptions",
    "build_chat_body",
    "build_responses_body",
    "dump_json",
    "find_prompt_request",
    "parse_json_object",
    "read_prompt_request",
    "reference_markers",
]

PROMPT_FIELDS = ("prompt_id", "prompt_variables", "prompt_version", "prompt_label")
CREDENTIAL_FIELDS = (
    "langfuse_public_key",
    "langfuse_secret_key",
    "langfuse_secret",
    "langfuse_host",
)
_STRIPPED = frozenset((*PROMPT_FIELDS, *CREDENTIAL_FIELDS))
MODEL_PREFIX = "langfuse/"
# Top-level fields whose value decides the rewrite; repeating one is refused.
_READ_FIELDS = frozenset((*_STRIPPED, "prompt"))

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

ClientMessages = Literal["replace", "append"]


@dataclass(frozen=True, slots=True)
class ModelPrompt:
    """A server-side binding: requests for model `alias` get this prompt and this real model."""

    prompt_id: str
    model: str | None = None
    prompt_version: int | None = None
    prompt_label: str | None = None

    @classmethod
    def coerce(cls, alias: str, value: ModelPrompt | Mapping[str, Any]) -> ModelPrompt:
        if isinstance(value, ModelPrompt):
            return value
        if not isinstance(value, Mapping) or not isinstance(value.get("prompt_id"), str):
            raise TypeError(f"model_prompts[{alias!r}] needs a string 'prompt_id'")
        unknown = set(value) - {"prompt_id", "model", "prompt_version", "prompt_label"}
        if unknown:
            raise TypeError(f"model_prompts[{alias!r}] has unknown keys {sorted(unknown)}")
        return cls(**value)


@dataclass(frozen=True, slots=True)
class Credentials:
    """Per-request registry credentials; the secret is kept out of `repr`."""

    public_key: str
    secret_key: str = field(repr=False)
    host: str | None = None


@dataclass(frozen=True, slots=True)
class PromptRequest:
    """What a body asks of the middleware."""

    ref: PromptRef
    variables: Mapping[str, Any]
    credentials: Credentials | None = None
    binding: ModelPrompt | None = None
    # Referenced as OpenAI's `prompt: {id, version, variables}`: OpenAI variable semantics apply.
    hosted: bool = False


@dataclass(frozen=True, slots=True)
class RewriteOptions:
    strict_variables: bool = False
    client_messages: ClientMessages = "replace"
    text_role: str = "user"


def reference_markers(aliases: Collection[str] = ()) -> tuple[re.Pattern[bytes], ...]:
    """Patterns one of which is in every body that references a prompt or carries credentials.

    Written plainly, a field the middleware reads starts with `"prompt` or `"langfuse_`, and a
    model alias is its JSON text. Any other spelling escapes a character: a letter or "_" of a
    field as \\u0050-\\u007f, an ASCII character of an alias as \\u0000-\\u007f (or "/" as
    \\/), any other character as \\uXXXX. A body without them is forwarded unparsed: testing
    them takes ~4 us for 4.8 KB; a parse takes ~5 but allocates, and adds 14-20 us per request
    under uvicorn (benchmarks/README.md).
    """
    escape = rb"\\u00[5-7]"
    if aliases:
        escape = rb"\\u00[0-7]" if all(a.isascii() for a in aliases) else rb"\\u"
    patterns = [rb'"(?:prompt|langfuse_)', escape]
    if any("/" in alias for alias in aliases):
        patterns.append(rb"\\/")
    patterns += [re.escape(json.dumps(a, ensure_ascii=False)[1:-1].encode()) for a in aliases]
    return tuple(re.compile(pattern) for pattern in patterns)


def parse_json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is anything else (it then passes untouched).

    JSON is read as UTF-8 only (RFC 8259; a leading BOM is ignored), as the json module reads it
    (orjson does the work where that gives the same; see `_json`). A top level that repeats a
    field the middleware reads is an `InvalidPromptRequest`: parsers disagree on which copy
    wins, so the app behind could otherwise see a field, e.g. a secret, that we did not.
    """
    return load_object(body, _READ_FIELDS)


def find_prompt_request(
    body: bytes, model_prompts: Mapping[str, ModelPrompt], *, allow_credentials: bool = False
) -> tuple[dict[str, Any], PromptRequest] | None:
    """`parse_json_object` then `read_prompt_request`: the body and its prompt reference, or None
    when it is no JSON object or references no prompt (its bytes then go on untouched).

    An object without a field the middleware reads or a model alias is not looked at further.
    """

    def may_reference(data: dict[str, Any]) -> bool:
        model = data.get("model")
        return not _READ_FIELDS.isdisjoint(data) or (
            isinstance(model, str) and model in model_prompts
        )

    data = load_object(body, _READ_FIELDS, may_reference)
    if data is None:
        return None
    request = read_prompt_request(data, model_prompts, allow_credentials=allow_credentials)
    return None if request is None else (data, request)


def read_prompt_request(
    body: Mapping[str, Any],
    model_prompts: Mapping[str, ModelPrompt],
    *,
    allow_credentials: bool = False,
) -> PromptRequest | None:
    """Find the prompt reference in `body`: `prompt_id` fields first, then a `model_prompts` alias,
    then OpenAI's `prompt` object.

    Returns None when the body references no prompt and carries no credentials.
    Raises `InvalidPromptRequest` (or a subclass) for malformed fields.
    """
    credentials = _read_credentials(body, allow_credentials)
    prompt_id = body.get("prompt_id")
    binding = None
    if prompt_id is None:
        model = body.get("model")
        binding = model_prompts.get(model) if isinstance(model, str) else None
    if binding is not None:
        prompt_id = binding.prompt_id
        version, label = binding.prompt_version, binding.prompt_label
    elif prompt_id is None and not any(body.get(f) is not None for f in PROMPT_FIELDS):
        hosted = read_hosted_reference(body)
        if hosted is not None:
            return PromptRequest(hosted[0], hosted[1], credentials, hosted=True)
        if credentials is not None:
            raise InvalidPromptRequest(
                "Registry credentials were sent without a prompt_id.", param="prompt_id"
            )
        return None
    else:
        version = _optional_version(body.get("prompt_version"))
        label = _optional_string(body, "prompt_label")
    if not isinstance(prompt_id, str) or not prompt_id:
        raise InvalidPromptRequest("prompt_id must be a non-empty string.", param="prompt_id")
    if version is not None and label is not None:
        raise InvalidPromptRequest(
            "Give prompt_version or prompt_label, not both.", param="prompt_label"
        )
    variables = body.get("prompt_variables")
    if variables is None:
        variables = {}
    elif not isinstance(variables, dict):
        raise InvalidPromptRequest("prompt_variables must be an object.", param="prompt_variables")
    return PromptRequest(PromptRef(prompt_id, version, label), variables, credentials, binding)


def _optional_version(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidPromptRequest(
            "prompt_version must be a positive integer.", param="prompt_version"
        )
    return value


def _optional_string(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidPromptRequest(f"{name} must be a non-empty string.", param=name)
    return value


def _read_credentials(body: Mapping[str, Any], allowed: bool) -> Credentials | None:
    sent = [f for f in CREDENTIAL_FIELDS if body.get(f) is not None]
    if not sent:
        return None
    if not allowed:
        raise RequestCredentialsDisabled(
            "This gateway does not accept registry credentials in the request body.",
            param=sent[0],
        )
    public_key = _optional_string(body, "langfuse_public_key")
    secret = _optional_string(body, "langfuse_secret_key") or _optional_string(
        body, "langfuse_secret"
    )
    host = _optional_string(body, "langfuse_host")
    if public_key is None or secret is None:
        raise InvalidPromptRequest(
            "Per-request credentials need both langfuse_public_key and langfuse_secret_key.",
            param="langfuse_public_key" if public_key is None else "langfuse_secret_key",
        )
    return Credentials(public_key, secret, host)


def compile_messages(
    prompt: Prompt,
    variables: Mapping[str, Any],
    client_messages: Any,
    options: RewriteOptions,
) -> list[dict[str, Any]]:
    """The messages to send: the compiled prompt, combined with the client's own messages."""
    compiled = prompt.render(variables, text_role=options.text_role)
    messages = compiled.messages
    client = client_messages if isinstance(client_messages, list) and client_messages else None
    unfilled = [name for _, name in compiled.placeholders]
    if client is not None and len(compiled.placeholders) == 1:
        # The usual shape: system prompt from the registry, conversation from the client.
        index = compiled.placeholders[0][0]
        messages = [*messages[:index], *client, *messages[index:]]
        unfilled, client = [], None
    if options.strict_variables and (compiled.missing_variables or unfilled):
        raise MissingVariables(prompt.name, compiled.missing_variables, unfilled)
    if client is not None and options.client_messages == "append":
        messages = [*messages, *client]
    return messages


def apply_model_and_config(
    body: dict[str, Any], prompt: Prompt, binding: ModelPrompt | None, params: frozenset[str]
) -> None:
    """Set `model` (prefix stripped, binding, then the prompt's config.model) and fill params."""
    model = body.get("model")
    if isinstance(model, str) and model.startswith(MODEL_PREFIX):
        body["model"] = model[len(MODEL_PREFIX) :]
    if binding is not None and binding.model:
        body["model"] = binding.model
    if prompt.model:
        body["model"] = prompt.model
    for key, value in prompt.config.items():
        if key in params and key not in body:
            finite(value)
            body[key] = value


def strip_prompt_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k not in _STRIPPED}
    if isinstance(out.get("prompt"), dict):
        del out["prompt"]
    return out


def _request_messages(
    prompt: Prompt,
    request: PromptRequest,
    client_messages: Any,
    options: RewriteOptions,
    *,
    chat: bool,
) -> list[dict[str, Any]]:
    if not request.hosted:
        return compile_messages(prompt, request.variables, client_messages, options)
    variables, parts = split_variables(request.variables)
    messages = compile_messages(prompt, variables, client_messages, options)
    if parts:
        fill_parts(messages, parts, chat=chat)
    return messages


def build_chat_body(
    body: Mapping[str, Any], request: PromptRequest, prompt: Prompt, options: RewriteOptions
) -> bytes:
    """The chat-completion body forwarded after the rewrite."""
    messages = _request_messages(prompt, request, body.get("messages"), options, chat=True)
    out = strip_prompt_fields(body)
    out["messages"] = messages
    apply_model_and_config(out, prompt, request.binding, CHAT_CONFIG_PARAMS)
    return dump_json(out)


def build_responses_body(
    body: Mapping[str, Any], request: PromptRequest, prompt: Prompt, options: RewriteOptions
) -> bytes:
    """The Responses API body: the prompt's messages first in `input`, then the client's input."""
    client_input = body.get("input")
    items: list[Any] = _request_messages(prompt, request, None, options, chat=False)
    if isinstance(client_input, str):
        items.append({"role": "user", "content": client_input})
    elif isinstance(client_input, list):
        items.extend(client_input)
    elif client_input is not None:
        raise InvalidPromptRequest("input must be a string or a list of items.", param="input")
    out = strip_prompt_fields(body)
    out["input"] = items
    apply_model_and_config(out, prompt, request.binding, RESPONSES_CONFIG_PARAMS)
    return dump_json(out)
