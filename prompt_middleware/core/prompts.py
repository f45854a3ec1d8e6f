"""Prompts, references to them, and compiling a prompt to chat messages.

Template rules are the Langfuse Python SDK's, to the letter: `{{` opens a variable, the first `}}`
after it closes it, the name is the text between with surrounding whitespace stripped. A known name
is replaced by its value (`None` -> "", anything else -> `str()`), an unknown one stays as written,
and inserted text is never scanned again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from ._json import unsendable
from .errors import InvalidPrompt, InvalidPromptRequest, InvalidPromptVariables

__all__ = [
    "DEFAULT_LABEL",
    "CompiledPrompt",
    "Prompt",
    "PromptRef",
    "PromptType",
    "TemplateEngine",
    "fill_template",
    "require_text",
]

PromptType = Literal["text", "chat"]
DEFAULT_LABEL = "production"

# Deeper configs are a broken registry's (a JSON schema nests a few levels, not dozens); the
# bound also keeps the forwarded body within what the JSON writers take.
_MAX_CONFIG_DEPTH = 64
_OPEN = "{{"
_CLOSE = "}}"
# A template split at its variables: (text before, name, the variable as written) for each,
# then the text after the last.
_Pieces = tuple[tuple[tuple[str, str, str], ...], str]


# References that passed `PromptRef.checked`, by their exact values: most requests name one of
# a few prompts, and building a frozen dataclass costs more than looking one up. Only plain types
# (True == 1, so a bool version must never find the ref of version 1) and bounded text.
_CHECKED: dict[str | tuple[Any, Any, Any], PromptRef] = {}
_MEMO_SIZE = 1024
_MEMO_TEXT = 256
_PLAIN_VERSION = (int, type(None))
_PLAIN_LABEL = (str, type(None))


@dataclass(frozen=True, slots=True)
class PromptRef:
    """Which prompt a request asks for. With neither version nor label, the `production` label."""

    name: str
    version: int | None = None
    label: str | None = None

    @classmethod
    def checked(
        cls,
        name: Any,
        version: Any = None,
        label: Any = None,
        *,
        name_param: str = "prompt_id",
        version_param: str = "prompt_version",
    ) -> PromptRef:
        """A reference built from untrusted values, or `InvalidPromptRequest` naming the field.

        The one place names, versions and labels are validated: a name or label must be
        non-empty text that can travel as UTF-8 (no lone surrogates), a version a positive
        integer, and version and label are not given together.
        """
        if version is None and label is None:  # as most requests ask: keyed by name alone
            key: str | tuple[Any, Any, Any] = name
            memo = cls is PromptRef and name.__class__ is str and len(name) <= _MEMO_TEXT
        else:
            key = (name, version, label)
            memo = (
                cls is PromptRef
                and name.__class__ is str
                and version.__class__ in _PLAIN_VERSION
                and label.__class__ in _PLAIN_LABEL
                and len(name) <= _MEMO_TEXT
                and (label is None or len(label) <= _MEMO_TEXT)
            )
        if memo:
            known = _CHECKED.get(key)
            if known is not None:  # these exact values passed the checks below before
                return known
        require_text(name, name_param)
        if version is not None and (
            isinstance(version, bool) or not isinstance(version, int) or version < 1
        ):
            raise InvalidPromptRequest(
                f"{version_param} must be a positive integer.", param=version_param
            )
        if label is not None:
            require_text(label, "prompt_label")
            if version is not None:
                raise InvalidPromptRequest(
                    "Give prompt_version or prompt_label, not both.", param="prompt_label"
                )
        ref = cls(name, version, label)
        if memo:
            if len(_CHECKED) >= _MEMO_SIZE:
                _CHECKED.clear()
            _CHECKED[key] = ref
        return ref

    @property
    def effective_label(self) -> str | None:
        if self.version is None and self.label is None:
            return DEFAULT_LABEL
        return self.label

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name!r} version {self.version}"
        return f"{self.name!r} label {self.effective_label!r}"


class CompiledPrompt(NamedTuple):
    """The result of compiling: messages plus what the variables did not fill.

    `placeholders` lists unfilled placeholders as (index, name): the index in `messages` where the
    placeholder's messages would be inserted. (A named tuple: one is built per rewrite, faster
    than a frozen dataclass.)
    """

    messages: list[dict[str, Any]]
    missing_variables: tuple[str, ...] = ()
    placeholders: tuple[tuple[int, str], ...] = ()


class TemplateEngine(Protocol):
    """Renders a prompt whose template is not in Langfuse's language (a `.prompt` file's
    Handlebars): `Prompt.compile_result` hands it the whole job."""

    def render(
        self,
        prompt: Prompt,
        variables: Mapping[str, Any],
        placeholders: Mapping[str, Any] | None,
        *,
        text_role: str,
    ) -> CompiledPrompt: ...


@dataclass(frozen=True, slots=True, eq=True)
class Prompt:
    """One version of a managed prompt, shaped like Langfuse's prompt object.

    `prompt` is the template text for a text prompt, or for a chat prompt a sequence of
    `{"role", "content"}` messages and `{"type": "placeholder", "name"}` entries.
    `engine`, when set, renders the template instead of Langfuse's rules (`prompt` then holds its
    source). `source` is "fallback" for a copy a `FallbackRegistry` served while its primary was
    down; it takes no part in equality.
    """

    name: str
    version: int
    type: PromptType
    prompt: str | tuple[Mapping[str, Any], ...]
    config: Mapping[str, Any] = field(default_factory=dict)
    labels: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    engine: TemplateEngine | None = None
    source: str | None = field(default=None, compare=False)
    # What every request would derive from this version alike (split templates, config in each
    # API's form), derived once: a warm rewrite then only fills in the request's values.
    _derived: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        what = f"prompt {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise InvalidPrompt(f"{what}: name must be a non-empty string")
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise InvalidPrompt(f"{what}: version must be an integer")
        if self.type == "text":
            if not isinstance(self.prompt, str):
                raise InvalidPrompt(f"{what}: a text prompt must be a string")
        elif self.type == "chat":
            if isinstance(self.prompt, str | bytes) or not isinstance(self.prompt, Sequence):
                raise InvalidPrompt(f"{what}: a chat prompt must be a list of messages")
            object.__setattr__(
                self, "prompt", tuple(_check_chat_entry(what, m) for m in self.prompt)
            )
        else:
            raise InvalidPrompt(f"{what}: type must be 'text' or 'chat', got {self.type!r}")
        _check_config(what, self.config)
        for attr in ("labels", "tags"):
            value = getattr(self, attr)
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise InvalidPrompt(f"{what}: {attr} must be a list of strings")
            object.__setattr__(self, attr, tuple(value))

    @classmethod
    def from_langfuse(cls, data: Mapping[str, Any]) -> Prompt:
        """Build from a Langfuse prompt object (the public API's JSON, or the same as a dict)."""
        if not isinstance(data, Mapping):
            raise InvalidPrompt("a prompt must be a JSON object")
        name = data.get("name")
        label = repr(name) if isinstance(name, str) else "without a name"
        try:
            kind = data.get("type", "chat" if isinstance(data.get("prompt"), list) else "text")
            return cls(
                name=name,  # type: ignore[arg-type]
                version=data.get("version", 1),
                type=kind,
                prompt=data.get("prompt"),  # type: ignore[arg-type]
                config=data.get("config") or {},
                labels=data.get("labels") or (),
                tags=data.get("tags") or (),
            )
        except InvalidPrompt:
            raise
        except (TypeError, ValueError) as exc:
            raise InvalidPrompt(f"prompt {label} is malformed: {exc}") from None

    @property
    def model(self) -> str | None:
        model = self.config.get("model")
        return model if isinstance(model, str) and model else None

    def compile(
        self,
        variables: Mapping[str, Any] | None = None,
        placeholders: Mapping[str, Any] | None = None,
        *,
        text_role: str = "user",
    ) -> list[dict[str, Any]]:
        """Chat messages for this prompt; unfilled placeholders are dropped."""
        return self.compile_result(variables, placeholders, text_role=text_role).messages

    def compile_result(
        self,
        variables: Mapping[str, Any] | None = None,
        placeholders: Mapping[str, Any] | None = None,
        *,
        text_role: str = "user",
    ) -> CompiledPrompt:
        """Compile, and also report what stayed unfilled.

        The Langfuse SDK takes variables and placeholders from one namespace (`compile(**kw)`):
        this compiles as it does with `{**variables, **placeholders}`, so a name given as a
        placeholder also fills a `{{name}}` in text.
        """
        values: Mapping[str, Any] = variables or {}
        if self.engine is not None:
            return self.engine.render(self, values, placeholders, text_role=text_role)
        if placeholders:
            values = {**values, **placeholders}
        missing: dict[str, None] = {}
        plan = self._derived.get(_PLAN)
        if plan is None:
            plan = self._derived[_PLAN] = _plan(self.prompt)
        if isinstance(self.prompt, str):  # `plan` is its template's pieces
            text = _fill(plan, values, missing)
            return CompiledPrompt([{"role": text_role, "content": text}], tuple(missing))

        messages: list[dict[str, Any]] = []
        unfilled: list[tuple[int, str]] = []
        for role, pieces in plan:
            if role is None:  # a placeholder: `pieces` is its name
                if pieces not in values:
                    unfilled.append((len(messages), pieces))
                    continue
                filled = values[pieces]
                messages.extend(_placeholder_messages(pieces, filled, values, missing))
            else:
                content = _fill(pieces, values, missing)
                messages.append({"role": role, "content": content})
        # `CompiledPrompt(...)` without the Python frame of its __new__ (on every rewrite)
        return tuple.__new__(CompiledPrompt, (messages, tuple(missing), tuple(unfilled)))


def require_text(value: Any, param: str) -> str:
    """`value` if it is non-empty text that can travel as UTF-8 (a lone surrogate such as
    `\\ud800` cannot), else `InvalidPromptRequest` naming `param`."""
    if not isinstance(value, str) or not value:
        raise InvalidPromptRequest(f"{param} must be a non-empty string.", param=param)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidPromptRequest(
            f"{param} holds an unpaired surrogate (\\ud800-\\udfff), not valid text.",
            param=param,
        ) from None
    return value


def fill_template(
    template: str, variables: Mapping[str, Any], missing: dict[str, None] | None = None
) -> str:
    """Fill `{{name}}` variables as the Langfuse SDK does; record unknown names in `missing`."""
    return _fill(_split(template), variables, missing)


def _split(template: str) -> _Pieces:
    holes: list[tuple[str, str, str]] = []
    pos = 0
    start = template.find(_OPEN)
    while start != -1:
        end = template.find(_CLOSE, start)
        if end == -1:
            break
        name = template[start + 2 : end].strip()
        holes.append((template[pos:start], name, template[start : end + 2]))
        pos = end + 2
        start = template.find(_OPEN, pos)
    return tuple(holes), template[pos:]


_PLAN = "plan"


def _plan(prompt: str | tuple[Mapping[str, Any], ...]) -> Any:
    """A text template's pieces; for a chat prompt, (role, pieces) per message and (None, name)
    per placeholder."""
    if isinstance(prompt, str):
        return _split(prompt)
    return tuple(
        (None, entry["name"])
        if entry.get("type") == "placeholder"
        else (entry["role"], _split(entry["content"]))
        for entry in prompt
    )


def _fill(pieces: _Pieces, variables: Mapping[str, Any], missing: dict[str, None] | None) -> str:
    holes, tail = pieces
    if not holes:
        return tail
    out: list[str] = []
    for text, name, hole in holes:
        out.append(text)
        if name in variables:
            value = variables[name]
            try:
                out.append(
                    value
                    if value.__class__ is str  # the usual value: no str() call
                    else ("" if value is None else str(value))
                )
            except RecursionError:  # a JSON value nested right up to the parser's limit
                raise InvalidPromptVariables(
                    f"Variable {name!r} is nested too deeply.", param="prompt_variables"
                ) from None
        else:
            out.append(hole)
            if missing is not None:
                missing[name] = None
    out.append(tail)
    return "".join(out)


def _placeholder_messages(
    name: str, value: Any, variables: Mapping[str, Any], missing: dict[str, None]
) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise InvalidPromptVariables(
            f"Placeholder {name!r} must be a list of chat messages, got {type(value).__name__}.",
            param="prompt_variables",
        )
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidPromptVariables(
                f"Placeholder {name!r} item {i} must be a message object with a string 'role'.",
                param="prompt_variables",
            )
        compiled = dict(message)
        # As the SDK does: a message without content gets "" (None and lists pass through).
        content = message.get("content", "")
        if isinstance(content, str):
            compiled["content"] = fill_template(content, variables, missing)
        out.append(compiled)
    return out


def _check_config(what: str, config: Any) -> None:
    if not isinstance(config, Mapping):
        raise InvalidPrompt(f"{what}: config must be an object")
    if unsendable(dict(config), _MAX_CONFIG_DEPTH):
        raise InvalidPrompt(
            f"{what}: config holds NaN or Infinity, or nests deeper than {_MAX_CONFIG_DEPTH} levels"
        )


def _check_chat_entry(what: str, entry: Any) -> Mapping[str, Any]:
    if not isinstance(entry, Mapping):
        raise InvalidPrompt(f"{what}: every chat message must be an object")
    if entry.get("type") == "placeholder":
        if not isinstance(entry.get("name"), str) or not entry["name"]:
            raise InvalidPrompt(f"{what}: a placeholder needs a non-empty string 'name'")
        return {"type": "placeholder", "name": entry["name"]}
    role, content = entry.get("role"), entry.get("content")
    if not isinstance(role, str) or not isinstance(content, str):
        raise InvalidPrompt(f"{what}: chat messages need a string 'role' and 'content'")
    return {"role": role, "content": content}
