"""Building the forwarded body: a resolved prompt and a `PromptRequest` in, JSON bytes out.

`build_chat_body` (Chat Completions) and `build_responses_body` (Responses API) compile the
prompt, combine it with the client's own messages or input, set the model, fill parameters from
the prompt's config (translated for the API called: `dialects`), and strip the prompt fields
(DESIGN §4). Pure functions: no ASGI, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ._json import dump_json, finite
from .dialects import Api, only_filters, translate_config
from .errors import InvalidPromptRequest, InvalidPromptVariables, MissingVariables
from .prompts import Prompt
from .references import PART_MARKER, STRIPPED_FIELDS, ModelPrompt, Part, PromptRequest

__all__ = [
    "ClientMessages",
    "RewriteOptions",
    "build_chat_body",
    "build_messages",
    "build_responses_body",
]

MODEL_PREFIX = "langfuse/"

ClientMessages = Literal["replace", "append"]


@dataclass(frozen=True, slots=True)
class RewriteOptions:
    strict_variables: bool = False
    client_messages: ClientMessages = "replace"
    text_role: str = "user"


def build_chat_body(
    body: Mapping[str, Any], request: PromptRequest, prompt: Prompt, options: RewriteOptions
) -> bytes:
    """The chat-completion body forwarded after the rewrite."""
    messages = build_messages(prompt, request, body.get("messages"), options)
    if request.parts:
        fill_parts(messages, request.parts, chat=True)
    out = _without_prompt_fields(body)
    out["messages"] = messages
    _apply_model_and_config(out, prompt, request.model_prompt, "chat")
    return dump_json(out)


def build_responses_body(
    body: Mapping[str, Any], request: PromptRequest, prompt: Prompt, options: RewriteOptions
) -> bytes:
    """The Responses API body: the prompt's messages first in `input`, then the client's input."""
    client_input = body.get("input")
    items: list[Any] = build_messages(prompt, request, None, options)
    if request.parts:
        fill_parts(items, request.parts, chat=False)
    if isinstance(client_input, str):
        items.append({"role": "user", "content": client_input})
    elif isinstance(client_input, list):
        items.extend(client_input)
    elif client_input is not None:
        raise InvalidPromptRequest("input must be a string or a list of items.", param="input")
    out = _without_prompt_fields(body)
    out["input"] = items
    _apply_model_and_config(out, prompt, request.model_prompt, "responses")
    return dump_json(out)


def build_messages(
    prompt: Prompt,
    request: PromptRequest,
    client_messages: Any,
    options: RewriteOptions,
) -> list[dict[str, Any]]:
    """The messages to send: the compiled prompt, combined with the client's own messages."""
    compiled = prompt.compile_result(request.variables, text_role=options.text_role)
    messages = compiled.messages
    client = client_messages if isinstance(client_messages, list) and client_messages else None
    unfilled = compiled.placeholders
    if client is not None and len(unfilled) == 1:
        # The usual shape: system prompt from the registry, conversation from the client.
        index = unfilled[0][0]
        if index == len(messages):  # the placeholder is last, as it usually is
            messages = messages + client
        else:
            messages = [*messages[:index], *client, *messages[index:]]
        unfilled, client = (), None
    if options.strict_variables and (compiled.missing_variables or unfilled):
        names = [name for _, name in unfilled]
        raise MissingVariables(prompt.name, compiled.missing_variables, names)
    if client is not None and options.client_messages == "append":
        messages = [*messages, *client]
    return messages


def fill_parts(messages: list[dict[str, Any]], parts: Mapping[str, Part], *, chat: bool) -> None:
    """Replace each message whose whole content is a part marker by a content list with the part.

    `chat=True` converts the part to the Chat Completions shape (`image_url`, `file`).
    """
    for message in messages:
        content = message.get("content")
        if not isinstance(content, str) or PART_MARKER not in content:
            continue
        part = parts.get(content.strip())
        if part is None:
            inside = [found for marker, found in parts.items() if marker in content]
            if not inside:
                continue
            raise InvalidPromptVariables(
                f"Variable {inside[0].variable!r} is an {inside[0].value.get('type')} part: it "
                "can only be a message's whole content, not part of its text.",
                param="prompt.variables",
            )
        message["content"] = [_chat_part(part) if chat else dict(part.value)]


def _chat_part(part: Part) -> dict[str, Any]:
    value, name = part.value, part.variable
    if value.get("type") == "input_image":
        url = value.get("image_url")
        if not isinstance(url, str):
            raise InvalidPromptVariables(
                f"Variable {name!r}: chat completions need an input_image with an 'image_url'.",
                param="prompt.variables",
            )
        image: dict[str, Any] = {"url": url}
        if value.get("detail") is not None:
            image["detail"] = value["detail"]
        return {"type": "image_url", "image_url": image}
    file = {k: value[k] for k in ("file_id", "file_data", "filename") if value.get(k) is not None}
    if not file:
        raise InvalidPromptVariables(
            f"Variable {name!r}: an input_file needs file_id, file_data or filename.",
            param="prompt.variables",
        )
    return {"type": "file", "file": file}


def _apply_model_and_config(
    body: dict[str, Any], prompt: Prompt, bound: ModelPrompt | None, api: Api
) -> None:
    """Set `model` (prefix stripped, the alias's model, then the prompt's config.model) and fill
    the parameters the request left unset from the prompt's config, written for either API."""
    model = body.get("model")
    if isinstance(model, str) and model.startswith(MODEL_PREFIX):
        body["model"] = model[len(MODEL_PREFIX) :]
    if bound is not None and bound.model:
        body["model"] = bound.model
    model_override = prompt.model
    if model_override:
        body["model"] = model_override
    params = prompt._derived.get(api)  # `_config_params` kept them, as it usually does
    for key, value, sendable in params if params is not None else _config_params(prompt, api):
        if key not in body:
            if not sendable:
                finite(value)  # raises
            body[key] = value


def _config_params(prompt: Prompt, api: Api) -> tuple[tuple[str, Any, bool], ...]:
    """The parameters `prompt`'s config sets for `api`, each with whether JSON can carry it;
    kept on the prompt unless translating them logs (then that happens on every request)."""
    params: tuple[tuple[str, Any, bool], ...] | None = prompt._derived.get(api)
    if params is None:
        params = tuple(
            (key, value, _sendable(value))
            for key, value in translate_config(prompt.config, api).items()
        )
        if only_filters(prompt.config, api):
            prompt._derived[api] = params
    return params


def _sendable(value: Any) -> bool:
    try:
        finite(value)
    except InvalidPromptRequest:
        return False
    return True


def _without_prompt_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(body)  # the kept fields in their order; deleting the few others is cheaper
    for key in STRIPPED_FIELDS.intersection(out):
        del out[key]
    if isinstance(out.get("prompt"), dict):
        del out["prompt"]
    return out
