"""Reading a request body: which prompt it asks for, with which variables and credentials.

One reader per reference shape, first found wins (DESIGN §3):

1. `prompt_id` fields (`prompt_variables`, `prompt_version`, `prompt_label`): LiteLLM's shape;
2. a `model` that names a `ModelPrompt` alias: a server-side binding to a prompt and a real model;
3. OpenAI's hosted-prompt object `prompt: {"id", "version", "variables"}`.

Each returns a complete `PromptRequest`: the reference (validated once, here, so registries can
trust it), the template variables and, for OpenAI's shape, the input parts (`input_image`,
`input_file`) separated from them. Nothing downstream needs to know which shape it came from.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from ._json import KEY_CHAR_ESCAPE, draft_object, exact_object, is_json
from .errors import InvalidPromptRequest, InvalidPromptVariables, RequestCredentialsDisabled
from .prompts import PromptRef, require_text

__all__ = [
    "CREDENTIAL_FIELDS",
    "PROMPT_FIELDS",
    "STRIPPED_FIELDS",
    "Credentials",
    "ModelPrompt",
    "Part",
    "PromptRequest",
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
STRIPPED_FIELDS = frozenset((*PROMPT_FIELDS, *CREDENTIAL_FIELDS))
_CREDENTIAL_SET = frozenset(CREDENTIAL_FIELDS)
# Top-level fields whose value decides the rewrite; repeating one is refused.
_READ_FIELDS = frozenset((*STRIPPED_FIELDS, "prompt"))
_NAMES_OUR_FIELDS = re.compile(rb'"(?:prompt_|langfuse_)')
_PART_TYPES = ("input_image", "input_file")
# A part stands in the template as a marker no client can guess; after compiling, a message
# whose whole content is a marker gets the part as its content (see rewrite.fill_parts).
PART_MARKER = "\x00part:"


@dataclass(frozen=True, slots=True)
class ModelPrompt:
    """A model alias bound to a prompt: requests for the alias get this prompt and real model."""

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
class Part:
    """An OpenAI input part (`input_image`, `input_file`) given as a variable."""

    variable: str
    value: Mapping[str, Any]


_NO_PARTS: Mapping[str, Part] = MappingProxyType({})
_new_tuple = tuple.__new__


class PromptRequest(NamedTuple):
    """What a body asks of the middleware, complete: nothing else in the body is consulted.

    `variables` are template values (an OpenAI `input_text` already reduced to its text);
    `parts` maps the marker a part's variable was given as to the part.

    A named tuple, immutable like the frozen dataclasses around it: one is built per rewrite,
    and a tuple is built in a third of a frozen dataclass's time (benchmarks/README.md).
    """

    ref: PromptRef
    variables: Mapping[str, Any]
    credentials: Credentials | None = None
    model_prompt: ModelPrompt | None = None
    parts: Mapping[str, Part] = _NO_PARTS


def reference_markers(aliases: Collection[str] = ()) -> tuple[re.Pattern[bytes], ...]:
    """Patterns one of which is in every body that references a prompt or carries credentials.

    Written plainly, a field the middleware reads starts with `"prompt` or `"langfuse_`, and a
    model alias is its JSON text. Any other spelling escapes a character: a letter or "_" of a
    field as \\u0050-\\u007f, an ASCII character of an alias as \\u0000-\\u007f (or "/" as
    \\/), any other character as \\uXXXX. A body without them is forwarded unparsed, which is
    far cheaper than parsing it (benchmarks/README.md).
    """
    escape = KEY_CHAR_ESCAPE.pattern
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
    return exact_object(body, draft_object(body), _READ_FIELDS)


def find_prompt_request(
    body: bytes, model_prompts: Mapping[str, ModelPrompt], *, allow_credentials: bool = False
) -> tuple[dict[str, Any], PromptRequest] | None:
    """The body and its prompt reference, or None when it is no JSON object or references no
    prompt (its bytes then go on untouched).

    An object without a field the middleware reads or a model alias is not looked at further:
    what decides that (which keys there are, the string `model`) reads the same in both parsers.
    """
    draft = draft_object(body)
    if draft is None:
        return None
    if isinstance(draft, dict) and _READ_FIELDS.isdisjoint(draft):
        model = draft.get("model")
        if not isinstance(model, str) or model not in model_prompts:
            return None
    data = exact_object(body, draft, _READ_FIELDS)
    if data is None:
        if _NAMES_OUR_FIELDS.search(body) and not is_json(body):
            # Not JSON (or NaN, Infinity...), yet naming prompt or credential fields: forwarded
            # unread, it would carry them upstream unexamined, and no OpenAI-compatible server
            # takes a body that is not JSON, so refusing it costs a client nothing.
            raise InvalidPromptRequest(
                "The request body names prompt_* or langfuse_* fields but is not valid JSON"
                " (NaN and Infinity are not JSON); it was not forwarded."
            )
        return None
    request = read_prompt_request(data, model_prompts, allow_credentials=allow_credentials)
    return None if request is None else (data, request)


def read_prompt_request(
    body: Mapping[str, Any],
    model_prompts: Mapping[str, ModelPrompt],
    *,
    allow_credentials: bool = False,
) -> PromptRequest | None:
    """The prompt reference in `body`, by the first reader that finds one; None when the body
    references no prompt and carries no credentials.

    Raises `InvalidPromptRequest` (or a subclass) for malformed fields.
    """
    credentials = (
        None  # the usual body: no credential field at all
        if _CREDENTIAL_SET.isdisjoint(body)
        else _read_credentials(body, allow_credentials)
    )
    request = (
        (_read_model_alias(body, model_prompts, credentials) if model_prompts else None)
        or _read_prompt_fields(body, credentials)
        or _read_openai_prompt(body, credentials)
    )
    if request is None and credentials is not None:
        raise InvalidPromptRequest(
            "Registry credentials were sent without a prompt_id.", param="prompt_id"
        )
    return request


def _read_prompt_fields(
    body: Mapping[str, Any], credentials: Credentials | None
) -> PromptRequest | None:
    """LiteLLM's shape: `prompt_id` and its companions (any of them present counts)."""
    get = body.get
    if (
        get("prompt_id") is None
        and get("prompt_variables") is None
        and get("prompt_version") is None
        and get("prompt_label") is None
    ):
        return None
    ref = PromptRef.checked(get("prompt_id"), get("prompt_version"), get("prompt_label"))
    variables = get("prompt_variables")
    if variables.__class__ is not dict:  # as `_object` would, without a call for the usual dict
        variables = _object(variables, "prompt_variables")
    # `PromptRequest(ref, variables, credentials)` without the Python frame of its __new__
    return _new_tuple(PromptRequest, (ref, variables, credentials, None, _NO_PARTS))


def _read_model_alias(
    body: Mapping[str, Any],
    model_prompts: Mapping[str, ModelPrompt],
    credentials: Credentials | None,
) -> PromptRequest | None:
    """A `model` bound to a prompt, unless the body names its own `prompt_id`."""
    model = body.get("model")
    bound = model_prompts.get(model) if isinstance(model, str) else None
    if bound is None or body.get("prompt_id") is not None:
        return None
    ref = PromptRef.checked(bound.prompt_id, bound.prompt_version, bound.prompt_label)
    variables = _object(body.get("prompt_variables"), "prompt_variables")
    return PromptRequest(ref, variables, credentials, bound)


def _read_openai_prompt(
    body: Mapping[str, Any], credentials: Credentials | None
) -> PromptRequest | None:
    """OpenAI's `prompt: {"id" (or "prompt_id"), "version", "variables"}`, with OpenAI's
    variable semantics."""
    prompt = body.get("prompt")
    if not isinstance(prompt, dict):
        return None
    version = prompt.get("version")
    if isinstance(version, str) and version.isascii() and version.isdigit():
        # Bounded: int() refuses strings past 4300 digits; longer than 18 is no real version.
        version = int(version) if len(version) <= 18 else 0
    if version is not None and (
        isinstance(version, bool) or not isinstance(version, int) or version < 1
    ):
        raise InvalidPromptRequest(
            "prompt.version must be a positive integer (or its string).", param="prompt.version"
        )
    # OpenAI's own samples spell the id both ways.
    name, name_param = prompt.get("id"), "prompt.id"
    if name is None and "prompt_id" in prompt:
        name, name_param = prompt["prompt_id"], "prompt.prompt_id"
    ref = PromptRef.checked(name, version, name_param=name_param)
    variables, parts = _split_variables(_object(prompt.get("variables"), "prompt.variables"))
    return PromptRequest(ref, variables, credentials, parts=parts)


def _split_variables(variables: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Part]]:
    """Template values for OpenAI-style variables, and the parts that stand for whole contents.

    `input_text` objects become their text. An `input_image` / `input_file` object becomes a
    unique marker string, so after compiling the rewrite can tell whether it stood alone.
    """
    values: dict[str, Any] = {}
    parts: dict[str, Part] = {}
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
            marker = f"{PART_MARKER}{secrets.token_hex(8)}\x00"
            parts[marker] = Part(name, value)
            values[name] = marker
        else:
            values[name] = value
    return values, parts


def _optional_text(value: Any, param: str) -> str | None:
    return None if value is None else require_text(value, param)


def _object(value: Any, param: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidPromptRequest(f"{param} must be an object.", param=param)
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
    public_key = _optional_text(body.get("langfuse_public_key"), "langfuse_public_key")
    secret = _optional_text(
        body.get("langfuse_secret_key"), "langfuse_secret_key"
    ) or _optional_text(body.get("langfuse_secret"), "langfuse_secret")
    host = _optional_text(body.get("langfuse_host"), "langfuse_host")
    if public_key is None or secret is None:
        raise InvalidPromptRequest(
            "Per-request credentials need both langfuse_public_key and langfuse_secret_key.",
            param="langfuse_public_key" if public_key is None else "langfuse_secret_key",
        )
    return Credentials(public_key, secret, host)
