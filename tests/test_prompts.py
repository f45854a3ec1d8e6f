"""Prompt objects and template compiling: the Langfuse Python SDK's rules, one table per rule.

`tests/test_langfuse_parity.py` checks the same code against the SDK itself; this file pins each
rule down with hand-picked cases so a failure names the rule that broke.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from prompt_middleware.core.errors import (
    InvalidPrompt,
    InvalidPromptRequest,
    InvalidPromptVariables,
)
from prompt_middleware.core.prompts import (
    DEFAULT_LABEL,
    CompiledPrompt,
    Prompt,
    PromptRef,
    fill_template,
)


def text(template: str, **kw: Any) -> Prompt:
    return Prompt(name="t", version=1, type="text", prompt=template, **kw)


def chat(*entries: dict[str, Any], **kw: Any) -> Prompt:
    return Prompt(name="c", version=1, type="chat", prompt=entries, **kw)


def ph(name: str) -> dict[str, str]:
    return {"type": "placeholder", "name": name}


# --------------------------------------------------------------------------------------------
# fill_template


@pytest.mark.parametrize(
    ("template", "variables", "expected"),
    [
        # the basic form, and whitespace inside the braces
        pytest.param("Hello {{name}}!", {"name": "Ada"}, "Hello Ada!", id="plain"),
        pytest.param("{{ name }}", {"name": "x"}, "x", id="spaces"),
        pytest.param("{{\tname\t}}", {"name": "x"}, "x", id="tabs"),
        pytest.param("{{\n name \n}}", {"name": "x"}, "x", id="newlines"),
        pytest.param("{{ \t\r\n name}}", {"name": "x"}, "x", id="mixed-leading-ws"),
        pytest.param("{{\u00a0name\u2003}}", {"name": "x"}, "x", id="unicode-ws-stripped"),
        pytest.param("{{ a }} and {{a}}", {"a": 1}, "1 and 1", id="same-name-twice"),
        pytest.param("{{a}}{{b}}", {"a": "A", "b": "B"}, "AB", id="adjacent"),
        pytest.param("no vars", {"a": 1}, "no vars", id="no-vars"),
        pytest.param("", {"a": 1}, "", id="empty-template"),
        # names: case-sensitive, any characters
        pytest.param("{{Name}}", {"name": "x"}, "{{Name}}", id="case-sensitive"),
        pytest.param("{{first name}}", {"first name": "Ada"}, "Ada", id="inner-space-name"),
        pytest.param("{{ first  name }}", {"first  name": "Ada"}, "Ada", id="inner-spaces-kept"),
        pytest.param(
            "{{ first  name }}", {"first name": "Ada"}, "{{ first  name }}", id="ws-exact"
        ),
        pytest.param("{{a-b}}", {"a-b": 1}, "1", id="dash"),
        pytest.param("{{a.b}}", {"a.b": 1}, "1", id="dot-literal-name"),
        pytest.param("{{é}} {{🙂}}", {"é": "e", "🙂": "smile"}, "e smile", id="unicode-names"),
        pytest.param("{{}}", {"": "E"}, "E", id="empty-name"),
        pytest.param("{{  }}", {"": "E"}, "E", id="blank-name"),
        pytest.param("{{}}", {}, "{{}}", id="empty-name-missing"),
        # a missing name stays exactly as written
        pytest.param("{{ missing }}", {}, "{{ missing }}", id="missing-kept"),
        pytest.param("a {{\tx\n}} b", {"y": 1}, "a {{\tx\n}} b", id="missing-ws-kept"),
        pytest.param("{{a}} {{b}}", {"b": "B"}, "{{a}} B", id="one-missing"),
        # inserted values are never scanned again
        pytest.param("{{a}}{{b}}", {"a": "{{b}}", "b": "B"}, "{{b}}B", id="no-rescan"),
        pytest.param("{{a}}", {"a": "{{a}}"}, "{{a}}", id="self-reference"),
        pytest.param("{{a}}}}", {"a": "{{b", "b": "B"}, "{{b}}", id="no-join-with-rest"),
        pytest.param("{{a}}b}}", {"a": "{{", "{{b": "X"}, "{{b}}", id="no-join-open"),
        # no escaping, no sections, no dotted lookup
        pytest.param("\\{{a}}", {"a": "x"}, "\\x", id="backslash-no-escape"),
        pytest.param("{{{{a}}}}", {"{{a": "X"}, "X}}", id="quad-braces"),
        pytest.param(
            "{{#items}}x{{/items}}",
            {"items": [1]},
            "{{#items}}x{{/items}}",
            id="section-not-mustache",
        ),
        pytest.param(
            "{{#items}}x{{/items}}", {"#items": "Y"}, "Yx{{/items}}", id="section-is-a-name"
        ),
        pytest.param("{{user.name}}", {"user": {"name": "A"}}, "{{user.name}}", id="no-dotted"),
        pytest.param("{{&a}}", {"a": "x"}, "{{&a}}", id="no-unescaped-marker"),
        pytest.param("{{!a}}", {"!a": "x"}, "x", id="no-comments"),
        pytest.param("{{a}}", {"a": "<b>&"}, "<b>&", id="no-html-escaping"),
        # unclosed and overlapping braces
        pytest.param("{{a", {"a": "x"}, "{{a", id="unclosed"),
        pytest.param("{{a}} {{b", {"a": "x", "b": "y"}, "x {{b", id="unclosed-after-var"),
        pytest.param("{{a} }", {"a": "x"}, "{{a} }", id="split-close"),
        pytest.param("{ {a}}", {"a": "x"}, "{ {a}}", id="split-open"),
        pytest.param("{a}", {"a": "x"}, "{a}", id="single-braces"),
        pytest.param("}}{{a}}", {"a": "x"}, "}}x", id="close-before-open"),
        pytest.param("{{a {{b}}", {"a {{b": "X", "b": "B"}, "X", id="nested-open-one-name"),
        pytest.param("{{a {{b}}", {"b": "B"}, "{{a {{b}}", id="nested-open-missing"),
        pytest.param("{{a {{b}} c}}", {"a {{b": "X"}, "X c}}", id="nested-first-close"),
        pytest.param("{{{x}}}", {"{x": "X", "x": "no"}, "X}", id="triple-braces"),
        pytest.param("{{{x}}}", {"x": "no"}, "{{{x}}}", id="triple-braces-missing"),
        pytest.param("{{a}}}", {"a": "x"}, "x}", id="extra-close"),
        pytest.param("{{{{a}}", {"{{a": "x"}, "x", id="double-open"),
        pytest.param("{{}}}}", {"": "E"}, "E}}", id="empty-then-close"),
        # values
        pytest.param("[{{a}}]", {"a": None}, "[]", id="none-empty"),
        pytest.param("[{{a}}]", {"a": ""}, "[]", id="empty-string"),
    ],
)
def test_fill_template(template: str, variables: dict[str, Any], expected: str) -> None:
    assert fill_template(template, variables) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ""),
        ("s", "s"),
        (True, "True"),
        (False, "False"),
        (0, "0"),
        (-7, "-7"),
        (1.0, "1.0"),
        (0.1, "0.1"),
        (1e20, "1e+20"),
        (float("inf"), "inf"),
        ([1, "a", None], "[1, 'a', None]"),
        ({"k": None, "n": True}, "{'k': None, 'n': True}"),
        ([], "[]"),
        ({}, "{}"),
        ("{{x}}", "{{x}}"),
    ],
)
def test_value_to_text_is_python_str(value: Any, expected: str) -> None:
    assert fill_template("<{{v}}>", {"v": value, "x": "no"}) == f"<{expected}>"


@pytest.mark.parametrize(
    ("template", "variables", "missing"),
    [
        ("{{a}} {{ b }} {{a}} {{c}}", {"c": 1}, ("a", "b")),
        ("{{ first name }}", {}, ("first name",)),
        ("{{a {{b}}", {"b": 1}, ("a {{b",)),
        ("{{x}}", {"x": None}, ()),
        ("{{a", {}, ()),
        ("{{}}", {}, ("",)),
    ],
)
def test_fill_template_records_missing(
    template: str, variables: dict[str, Any], missing: tuple[str, ...]
) -> None:
    seen: dict[str, None] = {}
    fill_template(template, variables, seen)
    assert tuple(seen) == missing


# --------------------------------------------------------------------------------------------
# text prompts


def test_text_prompt_compiles_to_one_user_message() -> None:
    prompt = text("Hi {{name}}, {{ other }}")
    assert prompt.compile({"name": "Ada"}) == [{"role": "user", "content": "Hi Ada, {{ other }}"}]


@pytest.mark.parametrize("role", ["user", "system", "developer"])
def test_text_role(role: str) -> None:
    assert text("x").compile(text_role=role) == [{"role": role, "content": "x"}]


def test_text_prompt_render_reports_missing_variables_in_order() -> None:
    result = text("{{b}} {{a}} {{b}} {{ c }}").compile_result({"c": 3})
    assert result == CompiledPrompt(
        [{"role": "user", "content": "{{b}} {{a}} {{b}} 3"}], ("b", "a"), ()
    )


@pytest.mark.parametrize("variables", [None, {}])
def test_text_prompt_without_variables_keeps_template(variables: dict[str, Any] | None) -> None:
    result = text("{{a}} and {{ b }}").compile_result(variables)
    assert result.messages == [{"role": "user", "content": "{{a}} and {{ b }}"}]
    assert result.missing_variables == ("a", "b")
    assert result.placeholders == ()


# --------------------------------------------------------------------------------------------
# chat prompts


def test_chat_messages_are_compiled_in_order_as_role_and_content_only() -> None:
    prompt = chat(
        {"role": "system", "content": "You are {{who}}.", "type": "chatmessage", "name": "sys"},
        {"role": "user", "content": "{{q}}", "extra": 1},
        {"role": "assistant", "content": "no vars"},
    )
    assert prompt.compile({"who": "kind", "q": None}) == [
        {"role": "system", "content": "You are kind."},
        {"role": "user", "content": ""},
        {"role": "assistant", "content": "no vars"},
    ]


def test_placeholder_is_replaced_by_its_messages_with_all_their_keys() -> None:
    tool_call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    history = [
        {"role": "user", "content": "I am {{name}}", "name": "ada"},
        {"role": "assistant", "content": None, "tool_calls": [tool_call]},
        {"role": "tool", "content": "ok {{name}}", "tool_call_id": "c1"},
        {"role": "user", "content": [{"type": "text", "text": "{{name}}"}]},
    ]
    prompt = chat({"role": "system", "content": "sys {{name}}"}, ph("history"))
    assert prompt.compile({"name": "Ada", "history": history}) == [
        {"role": "system", "content": "sys Ada"},
        {"role": "user", "content": "I am Ada", "name": "ada"},
        {"role": "assistant", "content": None, "tool_calls": [tool_call]},
        {"role": "tool", "content": "ok Ada", "tool_call_id": "c1"},
        {"role": "user", "content": [{"type": "text", "text": "{{name}}"}]},
    ]
    # the caller's objects are not modified
    assert history[0] == {"role": "user", "content": "I am {{name}}", "name": "ada"}


def test_placeholder_message_without_content_gets_empty_content_as_the_sdk_does() -> None:
    call = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    prompt = chat(ph("h"))
    assert prompt.compile({"h": [{"role": "assistant", "tool_calls": call}]}) == [
        {"role": "assistant", "tool_calls": call, "content": ""}
    ]


def test_placeholder_message_contents_are_compiled_once() -> None:
    prompt = chat(ph("h"))
    out = prompt.compile({"h": [{"role": "user", "content": "{{a}}"}], "a": "{{h}}"})
    assert out == [{"role": "user", "content": "{{h}}"}]


def test_empty_placeholder_list_removes_it() -> None:
    prompt = chat({"role": "system", "content": "s"}, ph("h"), {"role": "user", "content": "u"})
    result = prompt.compile_result({"h": []})
    assert result.messages == [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert result.placeholders == ()


def test_several_placeholders_fill_in_order() -> None:
    prompt = chat(ph("a"), {"role": "system", "content": "mid"}, ph("b"), ph("a"))
    a = [{"role": "user", "content": "A"}]
    b = [{"role": "user", "content": "B1"}, {"role": "assistant", "content": "B2"}]
    assert [m["content"] for m in prompt.compile({"a": a, "b": b})] == ["A", "mid", "B1", "B2", "A"]


def test_unfilled_placeholders_are_dropped_and_reported_with_their_index() -> None:
    prompt = chat(
        ph("first"),
        {"role": "system", "content": "{{x}}"},
        ph("filled"),
        ph("later"),
        {"role": "user", "content": "{{ y }}"},
        ph("last"),
    )
    filled = [{"role": "user", "content": "f {{z}}"}, {"role": "assistant", "content": "g"}]
    result = prompt.compile_result({"filled": filled})
    assert result.messages == [
        {"role": "system", "content": "{{x}}"},
        {"role": "user", "content": "f {{z}}"},
        {"role": "assistant", "content": "g"},
        {"role": "user", "content": "{{ y }}"},
    ]
    # the index is where the placeholder's messages would go in `messages`
    assert result.placeholders == ((0, "first"), (3, "later"), (4, "last"))
    assert result.missing_variables == ("x", "z", "y")
    assert prompt.compile({"filled": filled}) == result.messages


def test_placeholders_argument_takes_precedence_over_variables() -> None:
    """One namespace, as the Langfuse SDK's `compile(**{**variables, **placeholders})`: the
    placeholder value wins for the placeholder and for a `{{h}}` in text alike."""
    prompt = chat(ph("h"), {"role": "user", "content": "{{h}}"})
    from_placeholders = [{"role": "user", "content": "P"}]
    out = prompt.compile({"h": "as a variable"}, {"h": from_placeholders})
    assert out == [
        {"role": "user", "content": "P"},
        {"role": "user", "content": str(from_placeholders)},
    ]
    # placeholders alone fill template variables too, as in the SDK's single namespace
    filled = prompt.compile_result(None, {"h": []})
    assert filled.missing_variables == ()
    assert filled.messages == [{"role": "user", "content": "[]"}]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("text", id="str"),
        pytest.param(5, id="int"),
        pytest.param(None, id="none"),
        pytest.param({"role": "user", "content": "x"}, id="single-message-dict"),
        pytest.param(({"role": "user", "content": "x"},), id="tuple"),
        pytest.param([1], id="list-of-int"),
        pytest.param(["hello"], id="list-of-str"),
        pytest.param([[{"role": "user", "content": "x"}]], id="nested-list"),
        pytest.param([{"content": "x"}], id="no-role"),
        pytest.param([{"role": 5, "content": "x"}], id="non-str-role"),
        pytest.param([{"role": "user", "content": "x"}, None], id="second-bad"),
    ],
)
def test_placeholder_value_not_a_list_of_messages_is_a_400(value: Any) -> None:
    prompt = chat({"role": "system", "content": "s"}, ph("history"))
    with pytest.raises(InvalidPromptVariables) as info:
        prompt.compile({"history": value})
    err = info.value
    assert err.status_code == 400
    assert err.code == "invalid_prompt_variables"
    assert err.param == "prompt_variables"
    assert "history" in err.message
    assert err.to_dict()["error"]["type"] == "invalid_request_error"


def test_chat_prompt_normalizes_its_entries() -> None:
    prompt = chat(
        {"type": "chatmessage", "role": "system", "content": "s", "extra": 1},
        {"type": "placeholder", "name": "h", "role": "ignored"},
    )
    assert prompt.prompt == (
        {"role": "system", "content": "s"},
        {"type": "placeholder", "name": "h"},
    )


# --------------------------------------------------------------------------------------------
# Prompt validation and construction


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"name": ""}, id="empty-name"),
        pytest.param({"name": None}, id="none-name"),
        pytest.param({"name": 5}, id="int-name"),
        pytest.param({"version": "1"}, id="str-version"),
        pytest.param({"version": True}, id="bool-version"),
        pytest.param({"version": 1.0}, id="float-version"),
        pytest.param({"version": None}, id="none-version"),
        pytest.param({"type": "completion"}, id="unknown-type"),
        pytest.param({"type": None}, id="none-type"),
        pytest.param({"type": "text", "prompt": ["x"]}, id="text-with-list"),
        pytest.param({"type": "text", "prompt": None}, id="text-with-none"),
        pytest.param({"type": "chat", "prompt": "x"}, id="chat-with-str"),
        pytest.param({"type": "chat", "prompt": b"x"}, id="chat-with-bytes"),
        pytest.param({"type": "chat", "prompt": None}, id="chat-with-none"),
        pytest.param({"type": "chat", "prompt": {"role": "user"}}, id="chat-with-dict"),
        pytest.param({"type": "chat", "prompt": ["hi"]}, id="chat-entry-str"),
        pytest.param({"type": "chat", "prompt": [{"content": "x"}]}, id="chat-no-role"),
        pytest.param({"type": "chat", "prompt": [{"role": "user"}]}, id="chat-no-content"),
        pytest.param(
            {"type": "chat", "prompt": [{"role": "user", "content": None}]}, id="chat-none-content"
        ),
        pytest.param(
            {"type": "chat", "prompt": [{"role": "user", "content": [{"type": "text"}]}]},
            id="chat-list-content",
        ),
        pytest.param({"type": "chat", "prompt": [{"role": 1, "content": "x"}]}, id="chat-int-role"),
        pytest.param({"type": "chat", "prompt": [{"type": "placeholder"}]}, id="ph-no-name"),
        pytest.param({"type": "chat", "prompt": [ph("")]}, id="ph-empty-name"),
        pytest.param(
            {"type": "chat", "prompt": [{"type": "placeholder", "name": 3}]}, id="ph-int-name"
        ),
        pytest.param({"config": ["model"]}, id="config-list"),
        pytest.param({"config": "gpt-4o"}, id="config-str"),
        pytest.param({"labels": "production"}, id="labels-str"),
        pytest.param({"labels": ["a", 1]}, id="labels-int"),
        pytest.param({"labels": None}, id="labels-none"),
        pytest.param({"labels": {"production": True}}, id="labels-dict"),
        pytest.param({"tags": "x"}, id="tags-str"),
        pytest.param({"tags": [None]}, id="tags-none-item"),
    ],
)
def test_malformed_prompt_is_invalid(kwargs: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"name": "p", "version": 1, "type": "text", "prompt": "x"}
    fields.update(kwargs)
    with pytest.raises(InvalidPrompt) as info:
        Prompt(**fields)
    assert info.value.status_code == 502
    assert info.value.code == "invalid_prompt"


def test_prompt_normalizes_labels_and_tags_to_tuples() -> None:
    prompt = text("x", labels=["production", "latest"], tags=["a"], config={"model": "m"})
    assert prompt.labels == ("production", "latest")
    assert prompt.tags == ("a",)
    assert prompt.model == "m"


@pytest.mark.parametrize(
    ("config", "model"),
    [({}, None), ({"model": ""}, None), ({"model": 5}, None), ({"model": "gpt-4o"}, "gpt-4o")],
)
def test_model_property(config: dict[str, Any], model: str | None) -> None:
    assert text("x", config=config).model == model


def test_from_langfuse_api_chat_object() -> None:
    api_object = {
        "id": "clx",
        "createdAt": "2025-01-01T00:00:00.000Z",
        "updatedAt": "2025-01-01T00:00:00.000Z",
        "projectId": "p",
        "createdBy": "API",
        "name": "support/triage",
        "version": 3,
        "type": "chat",
        "isActive": None,
        "prompt": [
            {"type": "chatmessage", "role": "system", "content": "About {{product}}"},
            {"type": "placeholder", "name": "conversation"},
        ],
        "config": None,
        "labels": ["production", "latest"],
        "tags": [],
        "commitMessage": None,
        "resolutionGraph": None,
    }
    prompt = Prompt.from_langfuse(api_object)
    assert prompt == Prompt(
        name="support/triage",
        version=3,
        type="chat",
        prompt=(
            {"role": "system", "content": "About {{product}}"},
            {"type": "placeholder", "name": "conversation"},
        ),
        config={},
        labels=("production", "latest"),
    )
    conversation = [{"role": "user", "content": "hi"}]
    assert prompt.compile({"product": "X", "conversation": conversation}) == [
        {"role": "system", "content": "About X"},
        {"role": "user", "content": "hi"},
    ]


def test_from_langfuse_api_text_object() -> None:
    prompt = Prompt.from_langfuse(
        {
            "name": "greet",
            "version": 7,
            "type": "text",
            "prompt": "Hi {{name}}",
            "config": {"model": "gpt-4o-mini", "temperature": 0},
            "labels": [],
            "tags": ["t"],
        }
    )
    assert (prompt.name, prompt.version, prompt.type, prompt.prompt) == (
        "greet",
        7,
        "text",
        "Hi {{name}}",
    )
    assert prompt.config == {"model": "gpt-4o-mini", "temperature": 0}
    assert prompt.tags == ("t",)
    assert prompt.labels == ()


@pytest.mark.parametrize(
    ("data", "kind", "version"),
    [
        ({"name": "n", "prompt": "x"}, "text", 1),
        ({"name": "n", "prompt": [{"role": "user", "content": "x"}]}, "chat", 1),
        ({"name": "n", "prompt": "x", "version": 4, "labels": None, "tags": None}, "text", 4),
    ],
)
def test_from_langfuse_defaults(data: dict[str, Any], kind: str, version: int) -> None:
    prompt = Prompt.from_langfuse(data)
    assert (prompt.type, prompt.version, prompt.labels, prompt.tags) == (kind, version, (), ())
    assert prompt.config == {}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(None, id="none"),
        pytest.param([{"name": "n", "prompt": "x"}], id="list"),
        pytest.param("prompt", id="str"),
        pytest.param({"prompt": "x"}, id="no-name"),
        pytest.param({"name": "n"}, id="no-prompt"),
        pytest.param({"name": "n", "prompt": 5}, id="int-prompt"),
        pytest.param({"name": "n", "prompt": "x", "type": "chat"}, id="type-mismatch"),
        pytest.param({"name": "n", "prompt": "x", "version": None}, id="null-version"),
        pytest.param({"name": "n", "prompt": "x", "version": "2"}, id="str-version"),
        pytest.param({"name": "n", "prompt": "x", "labels": "production"}, id="labels-str"),
        pytest.param({"name": "n", "prompt": "x", "labels": 5}, id="labels-int"),
        pytest.param({"name": "n", "prompt": "x", "labels": {"a": 1}}, id="labels-dict"),
        pytest.param({"name": "n", "prompt": "x", "tags": "a"}, id="tags-str"),
        pytest.param({"name": "n", "prompt": "x", "config": [1]}, id="config-list"),
        pytest.param({"name": "n", "prompt": [{"role": "user"}]}, id="bad-message"),
    ],
)
def test_from_langfuse_malformed(data: Any) -> None:
    with pytest.raises(InvalidPrompt):
        Prompt.from_langfuse(data)


# --------------------------------------------------------------------------------------------
# PromptRef


@pytest.mark.parametrize(
    ("ref", "label", "shown"),
    [
        (PromptRef("p"), DEFAULT_LABEL, "'p' label 'production'"),
        (PromptRef("p", label="staging"), "staging", "'p' label 'staging'"),
        (PromptRef("p", version=3), None, "'p' version 3"),
        (PromptRef("p", version=3, label="latest"), "latest", "'p' version 3"),
    ],
)
def test_prompt_ref(ref: PromptRef, label: str | None, shown: str) -> None:
    assert ref.effective_label == label
    assert str(ref) == shown


def _deep(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({"temperature": math.nan}, id="nan"),
        pytest.param({"stop": [math.inf]}, id="inf-in-a-list"),
        pytest.param({"response_format": _deep(65)}, id="nested-past-64"),
    ],
)
def test_a_config_json_cannot_carry_is_the_registrys_fault(config: dict[str, Any]) -> None:
    with pytest.raises(InvalidPrompt, match="config"):
        Prompt("p", 1, "text", "x", config=config)
    Prompt("p", 1, "text", "x", config={"response_format": _deep(63)})  # within the bound


def test_a_checked_reference_is_remembered_by_exact_values_only() -> None:
    first = PromptRef.checked("support/assistant", 1)
    assert PromptRef.checked("support/assistant", 1) is first
    with pytest.raises(InvalidPromptRequest):  # True == 1, yet no version
        PromptRef.checked("support/assistant", True)
    with pytest.raises(InvalidPromptRequest):
        PromptRef.checked("support/assistant", 1, "production")
    with pytest.raises(InvalidPromptRequest):  # 1.0 == 1 too
        PromptRef.checked("support/assistant", 1.0)
