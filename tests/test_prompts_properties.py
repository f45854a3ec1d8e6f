"""Compiling prompts (core/prompts.py), checked over generated templates and variables.

`fill_template` inserts each value exactly once (never re-expanded); `Prompt.compile` never
raises on arbitrary templates and JSON variables (chat placeholders: only our errors); values
nested past the recursion limit are a 400, not a crash. Example tests are in test_prompts.py,
the comparison with the Langfuse SDK in test_langfuse_parity.py.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prompt_middleware.core.errors import (
    InvalidPromptVariables,
    PromptMiddlewareError,
)
from prompt_middleware.core.prompts import fill_template

from .helpers import (
    chat_prompt,
    text_prompt,
)
from .strategies import (
    ANY_CHAR,
    JSON_VALUES,
    MESSAGES,
    ROLES,
    TEXT,
    assert_sendable,
    bounded,
)


def _nested(depth: int) -> Any:
    deep: Any = "x"
    for _ in range(depth):
        deep = [deep]
    return deep


def test_deeply_nested_variable_value_compiles_or_is_400() -> None:
    """A value too deep for `str()` is a 400. Past the recursion limit but not that deep, it
    compiles to its text where `str()` writes it (Python 3.12 and later give C code a stack
    limit of its own) and is a 400 where `str()` refuses (3.10, 3.11)."""
    prompt = text_prompt("p", "{{v}}")
    with pytest.raises(InvalidPromptVariables, match="nested too deeply"):
        prompt.compile({"v": _nested(100_000)})
    past_the_limit = _nested(sys.getrecursionlimit() + 100)
    try:
        text = str(past_the_limit)
    except RecursionError:
        with pytest.raises(InvalidPromptVariables, match="nested too deeply"):
            prompt.compile({"v": past_the_limit})
    else:
        assert prompt.compile({"v": past_the_limit}) == [{"role": "user", "content": text}]
    assert prompt.compile({"v": [[["x"]]]}) == [{"role": "user", "content": "[[['x']]]"}]


# --- properties -----------------------------------------------------------------------------------


HOLE_NAMES = st.sampled_from(["a", "b", "name", "x y", "é", "1"])


PADDING = st.sampled_from(["", " ", "  ", "\t", " \n"])


LITERAL = st.text(st.characters(exclude_characters="{}", exclude_categories=()), max_size=6)


SEGMENTS = st.lists(
    st.one_of(
        LITERAL.map(lambda text: ("text", text, "")),
        st.tuples(st.just("hole"), HOLE_NAMES, PADDING),
    ),
    max_size=8,
)


VALUES = st.dictionaries(
    HOLE_NAMES,
    st.one_of(
        st.sampled_from(["{{a}}", "{{ b }}", "{{name}}", "}}", "{{", "{{x y}}", "{{é"]),
        st.text(ANY_CHAR, max_size=8),
        JSON_VALUES,
    ),
    max_size=6,
)


def render(value: Any) -> str:
    return "" if value is None else str(value)


@given(segments=SEGMENTS, values=VALUES)
@bounded(400)
def test_each_value_is_inserted_once_and_never_expanded_again(
    segments: list[tuple[str, str, str]], values: dict[str, Any]
) -> None:
    template, expected, missing = "", "", []
    for kind, text, pad in segments:
        if kind == "text":
            template += text
            expected += text
            continue
        hole = "{{" + pad + text + pad + "}}"
        template += hole
        if text in values:
            expected += render(values[text])
        else:
            expected += hole
            missing.append(text)
    seen: dict[str, None] = {}
    assert fill_template(template, values, seen) == expected
    assert list(seen) == list(dict.fromkeys(missing))
    prompt = text_prompt("p", template)
    assert prompt.compile(values) == [{"role": "user", "content": expected}]
    chat = chat_prompt("c", [{"role": "system", "content": template}])
    assert chat.compile(values) == [{"role": "system", "content": expected}]


TEMPLATES = st.text(st.one_of(st.sampled_from("{} \t\nab"), ANY_CHAR), max_size=30) | st.lists(
    st.sampled_from(["{{", "}}", "{", "}", "a", " ", "{{a}}", "\x00"]), max_size=12
).map("".join)


@given(template=TEMPLATES, variables=st.dictionaries(TEXT, JSON_VALUES, max_size=5))
@bounded(300)
def test_compile_never_raises_on_arbitrary_templates(
    template: str, variables: dict[str, Any]
) -> None:
    [message] = text_prompt("p", template).compile(variables)
    assert isinstance(message["content"], str)
    # Every unknown hole stays as written, so a template without `{{` comes back unchanged.
    if "{{" not in template:
        assert message["content"] == template


@given(
    entries=st.lists(
        st.one_of(
            st.fixed_dictionaries({"role": ROLES, "content": TEMPLATES}),
            st.fixed_dictionaries(
                {"type": st.just("placeholder"), "name": st.sampled_from(["h", "a", "name"])}
            ),
        ),
        max_size=4,
    ),
    variables=st.dictionaries(
        st.sampled_from(["h", "a", "name", "x"]), st.one_of(JSON_VALUES, MESSAGES), max_size=4
    ),
)
@bounded(300)
def test_chat_compile_raises_only_our_errors(
    entries: list[dict[str, Any]], variables: dict[str, Any]
) -> None:
    prompt = chat_prompt("c", entries)
    try:
        messages = prompt.compile(variables)
    except PromptMiddlewareError as exc:  # a placeholder value that is not a message list
        error: PromptMiddlewareError | None = exc
    else:
        error = None
        assert all(isinstance(m, dict) and "role" in m for m in messages)
    if error is not None:
        assert error.status_code == 400
        assert_sendable(error)
