"""OpenAI's hosted-prompt reference, `prompt: {"id", "version", "variables"}`, served from our
registries, and its variables: strings, `input_text`, and `input_image` / `input_file` parts.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from .errors import InvalidPromptRequest, InvalidPromptVariables
from .prompts import PromptRef

__all__ = ["Parts", "fill_parts", "read_hosted_reference", "split_variables"]

# name -> the input part a variable stands for; filled in after compiling.
Parts = dict[str, tuple[str, Mapping[str, Any]]]

_PART_TYPES = ("input_image", "input_file")


def read_hosted_reference(body: Mapping[str, Any]) -> tuple[PromptRef, dict[str, Any]] | None:
    """The reference in `body["prompt"]` when it is an object; None otherwise."""
    prompt = body.get("prompt")
    if not isinstance(prompt, dict):
        return None
    prompt_id = prompt.get("id")
    if not isinstance(prompt_id, str) or not prompt_id:
        raise InvalidPromptRequest("prompt.id must be a non-empty string.", param="prompt.id")
    version = _version(prompt.get("version"))
    variables = prompt.get("variables")
    if variables is None:
        variables = {}
    elif not isinstance(variables, dict):
        raise InvalidPromptRequest("prompt.variables must be an object.", param="prompt.variables")
    return PromptRef(prompt_id, version, None), variables


def _version(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        # Bounded: int() refuses strings past 4300 digits; longer than 18 is no real version.
        value = int(value) if len(value) <= 18 else 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidPromptRequest(
            "prompt.version must be a positive integer (or its string).", param="prompt.version"
        )
    return value


def split_variables(variables: Mapping[str, Any]) -> tuple[dict[str, Any], Parts]:
    """Template values for OpenAI-style variables, and the parts that stand for whole contents.

    `input_text` objects become their text. An `input_image` / `input_file` object becomes a
    unique marker string, so after compiling `fill_parts` can tell whether it stood alone.
    """
    values: dict[str, Any] = {}
    parts: Parts = {}
    for name, value in variables.items():
        kind = value.get("type") if isinstance(value, dict) else None
        if kind == "input_text":
            text = value.get("text")
            if not isinstance(text, str):
                raise InvalidPromptVariables(
                    f"Variable {name!r}: an input_text needs a string 'text'.",
                    param="prompt.variables",
                )
            values[name] = text
        elif kind in _PART_TYPES:
            marker = f"\x00part:{secrets.token_hex(8)}\x00"
            parts[marker] = (name, value)
            values[name] = marker
        else:
            values[name] = value
    return values, parts


def fill_parts(messages: list[dict[str, Any]], parts: Parts, *, chat: bool) -> None:
    """Replace each message whose whole content is a part marker by a content list with the part.

    `chat=True` converts the part to the Chat Completions shape (`image_url`, `file`).
    """
    for message in messages:
        content = message.get("content")
        if not isinstance(content, str) or "\x00part:" not in content:
            continue
        part = parts.get(content.strip())
        if part is None:
            inside = [found for marker, found in parts.items() if marker in content]
            if not inside:
                continue
            name, value = inside[0]
            raise InvalidPromptVariables(
                f"Variable {name!r} is an {value.get('type')} part: it can only be "
                "a message's whole content, not part of its text.",
                param="prompt.variables",
            )
        name, value = part
        message["content"] = [_chat_part(name, value) if chat else dict(value)]


def _chat_part(name: str, part: Mapping[str, Any]) -> dict[str, Any]:
    if part.get("type") == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise InvalidPromptVariables(
                f"Variable {name!r}: chat completions need an input_image with an 'image_url'.",
                param="prompt.variables",
            )
        image: dict[str, Any] = {"url": url}
        if part.get("detail") is not None:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    file = {k: part[k] for k in ("file_id", "file_data", "filename") if part.get(k) is not None}
    if not file:
        raise InvalidPromptVariables(
            f"Variable {name!r}: an input_file needs file_id, file_data or filename.",
            param="prompt.variables",
        )
    return {"type": "file", "file": file}
