"""`.prompt` files (Google's dotprompt: YAML front matter + Handlebars), rendered by `dotpromptz`.

`FileRegistry` hands a `.prompt` file here. The file becomes one `Prompt` whose `engine` renders
its template with Google's own packages (the `dotprompt` extra), so templates mean what they mean
in Genkit and every other dotprompt implementation:

- front matter `model` is the prompt's model, `config` its config (Genkit's camelCase names of
  the common settings, e.g. `maxOutputTokens`, are read as the OpenAI ones);
- `input.default` fills variables the request leaves out; `input.schema` (Picoschema or JSON
  Schema) is checked against the variables: a value of the wrong type is a 400
  `invalid_prompt_variables`, a required one missing counts as missing (a 400 with
  `strict_variables`, else it renders empty, as Handlebars does);
- `{{role "system"}}` / `"user"` / `"model"` (sent as `assistant`) sections are the messages;
- the client's messages (the conversation) go where `{{history}}` stands; without one, before
  the last user message, else at the end: dotprompt's own rule. The middleware sees that spot
  as the prompt's one placeholder, `history`.

`{{> name}}` includes the partial `_name.prompt` (`folder/_name.prompt` for `folder/name`), as
dotprompt's directory stores lay them out. `name.variant.prompt` beside `name.prompt` is served
for the label `variant`. Version numbers
are positions: the variants in name order, then the base file, which carries `production` (so
`latest` is the base file too).

The files are read here (the `dotpromptz` stores call asyncio directly, and we run on trio too);
parsing and compiling happen once per load, in `FileRegistry`'s worker thread. Rendering runs on
the event loop: it takes a few hundred microseconds of pure CPU (`benchmarks/dotprompt_render.py`),
which a thread would not make cheaper.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import InvalidPrompt, InvalidPromptVariables
from ..core.prompts import DEFAULT_LABEL, CompiledPrompt, Prompt
from .memory import PromptVersions

__all__ = ["DOTPROMPT_SUFFIX", "HISTORY", "DotpromptTemplate", "load_dotprompt_family"]

DOTPROMPT_SUFFIX = ".prompt"
HISTORY = "history"
_EXTRA_HINT = "install the extra, pip install 'prompt-middleware[dotprompt]'"
# dotpromptz marks roles and history in the rendered text with these; a variable's value must
# not be able to open a message of its own (e.g. a system one), so they are defused in values.
_MARKER = "<<<dotprompt:"
_DEFUSED = "<<<\u200bdotprompt:"
# Stands for the conversation while rendering, to learn where dotpromptz puts it.
_HISTORY_TEXT = "(history)"
_ROLES = {"model": "assistant"}
# Genkit's names for the common settings, read as OpenAI's (the OpenAI name wins if both).
_GENKIT_CONFIG = {
    "maxOutputTokens": "max_tokens",
    "topP": "top_p",
    "stopSequences": "stop",
    "frequencyPenalty": "frequency_penalty",
    "presencePenalty": "presence_penalty",
}
_VARIANT = re.compile(r"[^.]+")
# `{{> name}}`, `{{~> name}}`, `{{#> name}}…{{/name}}` (a block: its body is the fallback).
_PARTIAL = re.compile(r"\{\{~?\s*(#?)\s*>\s*([A-Za-z0-9_./-]+)")


@dataclass(frozen=True, eq=False)
class DotpromptTemplate:
    """The engine of a `.prompt` file's `Prompt`: its compiled Handlebars template.

    Two are equal when their files' text is.
    """

    source: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    _render: Callable[..., str] = field(default=str, repr=False)
    _validator: Any = field(default=None, repr=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DotpromptTemplate) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def render(
        self,
        prompt: Prompt,
        variables: Mapping[str, Any],
        placeholders: Mapping[str, Any] | None,
        *,
        text_role: str,
    ) -> CompiledPrompt:
        """Messages for `variables`; the client's history is reported as placeholder `history`
        (filled here from `placeholders["history"]` when given). `text_role` does not apply: an
        unmarked dotprompt section is a user message, as the format says."""
        from dotpromptz import DataArgument, Message, Role, TextPart
        from dotpromptz._parse import to_messages

        context = {**self.defaults, **{k: _defuse(v) for k, v in variables.items()}}
        self._check(prompt.name, context)
        missing = tuple(name for name in self.required if name not in context)
        marker = TextPart(text=_HISTORY_TEXT)
        history = Message(role=Role.USER, content=[marker])
        try:
            text = self._render(context, {"data": {}})
            rendered = to_messages(text, DataArgument(messages=[history]))
        except (ValueError, TypeError, LookupError, RecursionError) as exc:
            raise InvalidPrompt(
                f"prompt {prompt.name!r} failed to render ({type(exc).__name__})"
            ) from None
        messages: list[dict[str, Any]] = []
        spot = 0
        for message in rendered:
            # Found by identity: dotpromptz moves the conversation's parts, it does not copy.
            if len(message.content) == 1 and message.content[0] is marker:
                spot = len(messages)
            else:
                messages.append(_openai_message(message))
        filled = placeholders.get(HISTORY) if placeholders is not None else None
        if filled is None:
            return CompiledPrompt(messages, missing, ((spot, HISTORY),))
        if not isinstance(filled, list):
            raise InvalidPromptVariables(
                f"Placeholder {HISTORY!r} must be a list of chat messages.",
                param="prompt_variables",
            )
        return CompiledPrompt([*messages[:spot], *filled, *messages[spot:]], missing)

    def _check(self, name: str, context: Mapping[str, Any]) -> None:
        if self._validator is None:
            return
        error = next(iter(self._validator.iter_errors(dict(context))), None)
        if error is not None:
            where = ".".join(str(p) for p in error.absolute_path) or "(all)"
            raise InvalidPromptVariables(
                f"Variable {where!r} does not match the input schema of prompt {name!r} "
                f"({error.validator}).",
                param="prompt_variables",
            )


def load_dotprompt_family(name: str, path: Path, directory: Path) -> PromptVersions:
    """Every version of prompt `name`: its variants `stem.variant.prompt`, then `path` itself."""
    stem = path.name[: -len(DOTPROMPT_SUFFIX)]
    variants: list[tuple[str, Path]] = []
    for sibling in path.parent.glob(glob.escape(stem) + ".*" + DOTPROMPT_SUFFIX):
        variant = sibling.name[len(stem) + 1 : -len(DOTPROMPT_SUFFIX)]
        if not _VARIANT.fullmatch(variant):
            continue
        try:  # resolve() follows symlinks, so a link pointing out of the directory is refused
            resolved = sibling.resolve()
            if resolved.is_relative_to(directory) and resolved.is_file():
                variants.append((variant, resolved))
        except (OSError, RuntimeError):
            continue
    variants.sort()

    def partial(partial_name: str) -> str | None:
        file = _partial_path(directory, partial_name)
        return None if file is None else _read(name, file)

    versions = PromptVersions()
    for number, (variant, file) in enumerate(variants, start=1):
        source = _read(name, file)
        versions.add(
            load_dotprompt(name, source, version=number, labels=(variant,), partials=partial)
        )
    base = load_dotprompt(
        name,
        _read(name, path),
        version=len(variants) + 1,
        labels=(DEFAULT_LABEL,),
        partials=partial,
    )
    versions.add(base)
    return versions


def load_dotprompt(
    name: str,
    source: str,
    *,
    version: int = 1,
    labels: tuple[str, ...] = (DEFAULT_LABEL,),
    partials: Callable[[str], str | None] | None = None,
) -> Prompt:
    """The `Prompt` for a `.prompt` file's text: parsed and compiled (allow a few ms).

    `partials(name)` gives a partial's source, or None if there is none (`FileRegistry` reads
    `_name.prompt` files, `folder/_name.prompt` for `folder/name`, as dotprompt's stores do).
    """
    try:
        from dotpromptz import DotpromptError, parse_document
        from dotpromptz._helpers import BUILTIN_HELPERS
        from dotpromptz_handlebars import EscapeFunction, Handlebars
    except ImportError:
        raise InvalidPrompt(f"prompt {name!r} is a .prompt file: {_EXTRA_HINT}") from None
    try:
        parsed: Any = parse_document(source)
        handlebars = Handlebars(escape_fn=EscapeFunction.NO_ESCAPE)
        for helper, function in BUILTIN_HELPERS.items():
            handlebars.register_helper(helper, function)
        render = handlebars.compile(parsed.template)
        for partial_name, partial_source in _partials(name, parsed.template, partials).items():
            handlebars.register_partial(partial_name, partial_source)
    except (DotpromptError, ValueError, TypeError, RecursionError) as exc:
        raise InvalidPrompt(f"prompt {name!r}: invalid .prompt file ({exc})") from None
    config = _config(parsed.config or {})
    if parsed.model:
        config["model"] = parsed.model
    defaults: Mapping[str, Any] = {}
    validator: Any = None
    required: tuple[str, ...] = ()
    if parsed.input is not None:
        defaults = parsed.input.default or {}
        if parsed.input.schema is not None:
            validator, required = _input_schema(name, parsed.input.schema)
    engine = DotpromptTemplate(source, defaults, required, render, validator)
    return Prompt(
        name=name,
        version=version,
        type="text",
        prompt=parsed.template,
        config=config,
        labels=labels,
        engine=engine,
    )


def _partials(
    name: str, template: str, source: Callable[[str], str | None] | None
) -> dict[str, str]:
    """Every partial `template` uses, directly or through other partials, by name."""
    found: dict[str, str] = {}
    pending = [template]
    while pending:
        for match in _PARTIAL.finditer(pending.pop()):
            block, partial_name = match.group(1), match.group(2)
            if partial_name in found:
                continue
            text = source(partial_name) if source is not None else None
            if text is None:
                if block:  # `{{#> name}}fallback{{/name}}` renders its block without one
                    continue
                raise InvalidPrompt(f"prompt {name!r}: no partial {partial_name!r}")
            found[partial_name] = text
            pending.append(text)
    return found


def _partial_path(directory: Path, name: str) -> Path | None:
    folder, _, stem = name.rpartition("/")
    parts = name.split("/")
    if "\\" in name or "\x00" in name or any(p in ("", ".", "..") for p in parts):
        return None
    path = directory / folder / f"_{stem}{DOTPROMPT_SUFFIX}"
    try:  # resolve() follows symlinks, so a link pointing out of the directory is refused
        resolved = path.resolve()
        if resolved.is_relative_to(directory) and resolved.is_file():
            return resolved
    except (OSError, RuntimeError):
        pass
    return None


def _read(name: str, path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")  # a leading BOM is not part of the text
    except (OSError, UnicodeDecodeError) as exc:
        reason = type(exc).__name__
        raise InvalidPrompt(f"prompt {name!r}: cannot read its file ({reason})") from None


def _config(front_matter: Mapping[str, Any]) -> dict[str, Any]:
    config = dict(front_matter)
    for genkit, openai in _GENKIT_CONFIG.items():
        if genkit in config:
            value = config.pop(genkit)
            config.setdefault(openai, value)
    return config


def _input_schema(name: str, schema: Any) -> tuple[Any, tuple[str, ...]]:
    """A validator for the variables' types, and the names the schema requires."""
    import jsonschema
    from dotpromptz import picoschema_to_json_schema

    try:
        converted = _finish_now(picoschema_to_json_schema(schema))
    except (ValueError, TypeError) as exc:
        raise InvalidPrompt(f"prompt {name!r}: invalid input schema ({exc})") from None
    if not isinstance(converted, dict):
        return None, ()
    required = converted.get("required")
    names = tuple(r for r in required if isinstance(r, str)) if isinstance(required, list) else ()
    # Missing names are reported as missing variables, and extra ones are ignored as they are
    # for every prompt: the validator checks the types of what was given.
    checked = {k: v for k, v in converted.items() if k not in ("required", "additionalProperties")}
    try:
        jsonschema.Draft202012Validator.check_schema(checked)
    except jsonschema.SchemaError as exc:
        raise InvalidPrompt(f"prompt {name!r}: invalid input schema ({exc.message})") from None
    return jsonschema.Draft202012Validator(checked), names


def _finish_now(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends to its end, synchronously.

    dotpromptz's Picoschema converter is declared async for its schema resolver; without one
    it awaits nothing, and we call it from a worker thread with no event loop.
    """
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise ValueError("the schema refers to named schemas, which are not supported")


def _defuse(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(_MARKER, _DEFUSED) if _MARKER in value else value
    if isinstance(value, list):
        return [_defuse(v) for v in value]
    if isinstance(value, dict):
        return {k: _defuse(v) for k, v in value.items()}
    return value


def _openai_message(message: Any) -> dict[str, Any]:
    role = str(message.role.value)
    parts: list[dict[str, Any]] = []
    for part in message.content:
        text = getattr(part, "text", None)
        media = getattr(part, "media", None)
        if isinstance(text, str):
            parts.append({"type": "text", "text": text})
        elif media is not None:
            parts.append({"type": "image_url", "image_url": {"url": media.url}})
        # Other parts (section markers, tool requests) have no chat-message form.
    if all(p["type"] == "text" for p in parts):
        content: Any = "".join(p["text"] for p in parts)
    else:
        content = parts
    return {"role": _ROLES.get(role, role), "content": content}
