"""Differential tests: our template compiling against the real Langfuse Python SDK.

The SDK's `TextPromptClient` / `ChatPromptClient` are built from its own API models (what
`langfuse.get_prompt` builds them from) with the same template as our `Prompt`, and `compile`
must give the same messages. Only `langfuse.model` and `langfuse.api` are used: no `Langfuse()`
client, so no threads and no network.

Where the two differ on purpose (the SDK crashes, or emits `NOT_GIVEN` messages or leaves
unresolved placeholder entries in its output), the cases are listed in the tests at the bottom.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langfuse.api import Prompt_Chat, Prompt_Text
from langfuse.model import ChatPromptClient, TemplateParser, TextPromptClient

from prompt_middleware.core.errors import InvalidPromptVariables
from prompt_middleware.core.prompts import Prompt, fill_template

SETTINGS = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

ROLES = ("system", "user", "assistant", "developer", "tool")


# --------------------------------------------------------------------------------------------
# building both sides


def sdk_text(template: str) -> TextPromptClient:
    return TextPromptClient(
        Prompt_Text(name="p", version=1, prompt=template, config={}, labels=[], tags=[])
    )


def sdk_chat(entries: Sequence[Mapping[str, Any]]) -> ChatPromptClient:
    api_entries = [
        {"type": "placeholder", "name": e["name"]}
        if e.get("type") == "placeholder"
        else {"type": "chatmessage", "role": e["role"], "content": e["content"]}
        for e in entries
    ]
    api = Prompt_Chat.model_validate(
        {
            "type": "chat",
            "name": "p",
            "version": 1,
            "prompt": api_entries,
            "config": {},
            "labels": [],
            "tags": [],
        }
    )
    client = ChatPromptClient(api)
    assert len(client.prompt) == len(entries)  # the SDK kept every entry
    return client


def ours_text(template: str) -> Prompt:
    return Prompt(name="p", version=1, type="text", prompt=template)


def ours_chat(entries: Sequence[Mapping[str, Any]]) -> Prompt:
    return Prompt(name="p", version=1, type="chat", prompt=tuple(entries))


def sdk_compile_raw(
    entries: Sequence[Mapping[str, Any]], variables: Mapping[str, Any]
) -> list[dict[str, Any]]:
    return [dict(m) for m in sdk_chat(entries).compile(**variables)]


def is_sdk_placeholder(message: Mapping[str, Any]) -> bool:
    """An unresolved placeholder the SDK leaves in its output."""
    return message.get("type") == "placeholder" and set(message) == {"type", "name"}


def names_in(template: str) -> list[str]:
    return TemplateParser.find_variable_names(template)


def unique(names: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def valid_placeholder_value(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) for m in value
    )


# --------------------------------------------------------------------------------------------
# strategies

NAME_CHARS = "ab_-. é🙂{}#\t"
names = st.text(alphabet=NAME_CHARS, max_size=5)
blanks = st.text(alphabet=" \t\n\u00a0", max_size=2)
well_formed = st.builds(
    lambda left, name, right: "{{" + left + name + right + "}}", blanks, names, blanks
)
pieces = st.one_of(
    well_formed,
    well_formed,
    st.sampled_from(["{{", "}}", "{", "}", "{{{", "}}}", " ", "\t", "\n", "\r\n", "\u00a0"]),
    names,
    st.text(max_size=4),
)
templates = st.one_of(
    st.lists(pieces, max_size=12).map("".join),
    st.text(alphabet="{} \t\nab", max_size=20),
    st.text(max_size=10),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(alphabet=NAME_CHARS + "xyz", max_size=6),
    st.text(max_size=6),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=3), scalars, max_size=3),
)


def one_in_four(draw: st.DrawFn) -> bool:
    # two fair coins: hypothesis skews integers and one_of towards their first choices
    return draw(st.booleans()) and draw(st.booleans())


@st.composite
def variables_for(draw: st.DrawFn, template_texts: Sequence[str]) -> dict[str, Any]:
    """Variables whose names are partly the templates' own, partly near misses and noise."""
    own = unique([n for t in template_texts for n in names_in(t)])
    chosen = [n for n in own if not one_in_four(draw)]
    near = [
        draw(st.sampled_from([f" {n}", f"{n} ", n.upper(), n + "x", "{" + n]))
        for n in draw(st.lists(st.sampled_from(own), max_size=2) if own else st.just([]))
    ]
    noise = draw(st.lists(names, max_size=2))
    result: dict[str, Any] = {}
    for name in [*chosen, *near, *noise]:
        # sometimes a value that looks like a variable itself: it must never be expanded
        result[name] = draw(
            st.one_of(values, st.sampled_from(own).map(lambda n: "{{" + n + "}}"))
            if own
            else values
        )
    return result


message_contents = st.one_of(
    templates,
    templates,
    templates,
    st.none(),
    st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": templates}), min_size=1),
)


@st.composite
def placeholder_messages(draw: st.DrawFn) -> dict[str, Any]:
    message: dict[str, Any] = {"role": draw(st.sampled_from(ROLES))}
    if not one_in_four(draw):  # usually with content
        message["content"] = draw(message_contents)
    extra = draw(
        st.dictionaries(
            st.sampled_from(["name", "tool_call_id", "tool_calls", "refusal"]),
            st.one_of(st.text(max_size=4), st.lists(st.dictionaries(st.text(max_size=2), scalars))),
            max_size=3,
        )
    )
    return {**extra, **message}


bad_placeholder_values = st.one_of(
    scalars,
    st.dictionaries(st.sampled_from(["role", "content"]), st.text(max_size=3), min_size=1),
    st.lists(st.one_of(scalars, st.just({"content": "x"}), st.just({"role": 1})), min_size=1),
)


@st.composite
def placeholder_values(draw: st.DrawFn) -> Any:
    if one_in_four(draw) and draw(st.booleans()):
        return draw(bad_placeholder_values)
    if one_in_four(draw):
        return []
    return draw(st.lists(placeholder_messages(), min_size=1, max_size=3))


# mostly names no other variable has; "a" may also be a text variable ({{a}})
placeholder_names = st.sampled_from(["history", "history", "msgs", "x y", "{{a}}", "a"])


@st.composite
def chat_entries(draw: st.DrawFn) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.booleans()):
            entries.append({"type": "placeholder", "name": draw(placeholder_names)})
        else:
            entries.append({"role": draw(st.sampled_from(ROLES)), "content": draw(templates)})
    return entries


@st.composite
def chat_cases(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    entries = draw(chat_entries())
    filled = {
        e["name"]: draw(placeholder_values())
        for e in entries
        if e.get("type") == "placeholder" and not one_in_four(draw)
    }
    contents = [e["content"] for e in entries if "content" in e]
    for value in filled.values():
        if isinstance(value, list):
            contents += [m["content"] for m in value if isinstance(m, dict) and "content" in m]
    variables = draw(variables_for([c for c in contents if isinstance(c, str)]))
    return entries, {**variables, **filled}


@st.composite
def text_cases(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    template = draw(templates)
    return template, draw(variables_for([template]))


# --------------------------------------------------------------------------------------------
# the differential checks


def check_text(template: str, variables: dict[str, Any]) -> None:
    ours = ours_text(template).compile_result(variables)
    assert fill_template(template, variables) == ours.messages[0]["content"]
    assert ours.missing_variables == unique([n for n in names_in(template) if n not in variables])
    if "self" in variables:  # the SDK's compile(self, **kwargs) cannot take it: see below
        return
    expected = sdk_text(template).compile(**variables)
    assert ours.messages == [{"role": "user", "content": expected}]


def sdk_compile_chat(
    entries: list[dict[str, Any]], variables: dict[str, Any]
) -> list[dict[str, Any]] | None:
    """The SDK's output, or None where it cannot be had.

    The SDK crashes on placeholder messages whose content is None or a list. Those contents pass
    through untouched here, so they are swapped for inert strings (no braces) before the SDK runs
    and swapped back in its output. Not possible when such a placeholder value is also used as
    a text variable (its `str()` would change), nor for a variable named `self` (see below).
    """
    if "self" in variables:
        return None
    swapped, stand_ins = dict(variables), dict[str, Any]()
    texts = [e["content"] for e in entries if "content" in e]
    for value in variables.values():
        if valid_placeholder_value(value):
            texts += [m["content"] for m in value if isinstance(m.get("content"), str)]
    text_variables = {n for t in texts for n in names_in(t)}
    for entry in entries:
        if entry.get("type") != "placeholder":
            continue
        name = entry["name"]
        if not valid_placeholder_value(variables.get(name)):
            continue
        messages = []
        for message in variables[name]:
            if "content" in message and not isinstance(message["content"], str):
                stand_in = f"\x00passthrough-{len(stand_ins)}\x00"
                stand_ins[stand_in] = message["content"]
                messages.append({**message, "content": stand_in})
            else:
                messages.append(message)
        if messages != variables[name]:
            if name in text_variables:
                return None
            swapped[name] = messages
    out = [dict(m) for m in sdk_chat(entries).compile(**swapped)]
    return [
        {**m, "content": stand_ins[m["content"]]}
        if isinstance(m.get("content"), str) and m["content"] in stand_ins
        else m
        for m in out
    ]


def check_chat(entries: list[dict[str, Any]], variables: dict[str, Any]) -> None:
    prompt = ours_chat(entries)
    used = {e["name"] for e in entries if e.get("type") == "placeholder"}
    invalid = [n for n in used if n in variables and not valid_placeholder_value(variables[n])]

    if invalid:
        with pytest.raises(InvalidPromptVariables):
            prompt.compile_result(variables)
        try:
            sdk_out = None if "self" in variables else sdk_compile_raw(entries, variables)
        except (TypeError, AttributeError):
            return  # the SDK crashed on some other placeholder message first
        # ... where the SDK emits debris: NOT_GIVEN messages, or messages with a bad role
        assert sdk_out is None or any(
            not isinstance(m.get("role"), str) or m["role"] == "NOT_GIVEN" for m in sdk_out
        )
        return

    ours = prompt.compile_result(variables)
    assert prompt.compile(variables) == ours.messages

    # what we report as missing: every template and inserted string content, in order
    missing: list[str] = []
    for entry in entries:
        if entry.get("type") != "placeholder":
            missing += [n for n in names_in(entry["content"]) if n not in variables]
        elif entry["name"] in variables:
            for m in variables[entry["name"]]:
                content = m.get("content")
                if isinstance(content, str):
                    missing += [n for n in names_in(content) if n not in variables]
    assert ours.missing_variables == unique(missing)

    # None and list contents of placeholder messages are kept as they are
    inserted = [m for e in entries if e.get("name") in variables for m in variables[e["name"]]]
    assert [m.get("content") for m in inserted if not isinstance(m.get("content", ""), str)] == [
        m["content"] for m in ours.messages if "content" in m and not isinstance(m["content"], str)
    ]

    sdk_out = sdk_compile_chat(entries, variables)
    if sdk_out is None:
        return
    assert ours.messages == [m for m in sdk_out if not is_sdk_placeholder(m)]
    unresolved, dropped = [], 0
    for i, m in enumerate(sdk_out):
        if is_sdk_placeholder(m):
            unresolved.append((i - dropped, m["name"]))
            dropped += 1
    assert ours.placeholders == tuple(unresolved)


@given(case=text_cases())
@SETTINGS
def test_text_prompts_compile_like_the_sdk(case: tuple[str, dict[str, Any]]) -> None:
    check_text(*case)


@given(case=chat_cases())
@SETTINGS
def test_chat_prompts_compile_like_the_sdk(
    case: tuple[list[dict[str, Any]], dict[str, Any]],
) -> None:
    check_chat(*case)


@given(
    template=st.text(alphabet=string.printable + "{}{}{}é🙂\u00a0\u2028", max_size=40),
    data=st.data(),
)
@SETTINGS
def test_arbitrary_text_compiles_like_the_sdk(template: str, data: st.DataObject) -> None:
    check_text(template, data.draw(variables_for([template])))


# --------------------------------------------------------------------------------------------
# hand-picked cases, through the same checks

TEXT_CASES = [
    ("Hello {{name}}!", {"name": "Ada"}),
    ("{{ name }} {{\tname\n}} {{name}}", {"name": 1}),
    ("{{ missing }} {{ first  name }}", {"first name": "x"}),
    ("{{first name}} {{a-b}} {{Name}}", {"first name": "A", "a-b": 2, "name": "no"}),
    ("{{a}}{{b}}", {"a": "{{b}}", "b": "B"}),
    ("{{a}}}}", {"a": "{{b", "b": "B"}),
    ("\\{{a}} {{#s}}x{{/s}} {{u.n}}", {"a": 1, "s": [1], "u": {"n": 1}, "#s": True}),
    ("{{a", {"a": "x"}),
    ("{{a}} {{b", {"a": "x", "b": "y"}),
    ("{{a {{b}}", {"a {{b": "X", "b": "B"}),
    ("{{a {{b}}", {"b": "B"}),
    ("{{{x}}}", {"{x": "X", "x": "no"}),
    ("{{{x}}}", {"x": "no"}),
    ("{{{{a}}}}", {"{{a": "X"}),
    ("{{}} {{ }}", {"": "E"}),
    ("}}{{a}}{", {"a": None}),
    ("{{\u00a0a\u3000}}", {"a": "x"}),
    ("{{v}}|{{w}}|{{x}}|{{y}}|{{z}}", {"v": True, "w": 1.0, "x": [1, None], "y": {"k": "v"}}),
    ("{{z}}", {"z": float("nan")}),
    ("{{a}}", {}),
    ("", {"a": 1}),
]


@pytest.mark.parametrize(("template", "variables"), TEXT_CASES)
def test_hand_picked_text_cases(template: str, variables: dict[str, Any]) -> None:
    check_text(template, variables)


def msg(role: str, content: Any, **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **extra}


def ph(name: str) -> dict[str, str]:
    return {"type": "placeholder", "name": name}


CALL = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]

CHAT_CASES = [
    pytest.param([msg("system", "You are {{who}}")], {"who": "kind"}, id="one-message"),
    pytest.param(
        [msg("system", "{{a}}"), ph("h"), msg("user", "{{ b }}")],
        {"a": 1, "h": [msg("user", "{{a}} {{b}}", name="n"), msg("assistant", "x")]},
        id="placeholder-filled",
    ),
    pytest.param(
        [ph("h"), msg("system", "s"), ph("h")],
        {"h": [msg("tool", "r {{a}}", tool_call_id="c1")], "a": None},
        id="same-placeholder-twice",
    ),
    pytest.param(
        [msg("system", "s"), ph("h"), ph("g")], {"g": [msg("user", "u")]}, id="one-unresolved"
    ),
    pytest.param([ph("h"), ph("g")], {}, id="all-unresolved"),
    pytest.param([msg("system", "s"), ph("h")], {"h": []}, id="empty-list-removes"),
    pytest.param([ph("h")], {"h": [{"role": "assistant", "tool_calls": CALL}]}, id="no-content"),
    pytest.param([ph("h")], {"h": [msg("user", "{{h}}")]}, id="placeholder-in-own-content"),
    pytest.param([msg("user", "{{h}}"), ph("h")], {"h": [msg("user", "x")]}, id="list-as-text"),
    pytest.param([ph("h")], {"h": "a string"}, id="bad-string"),
    pytest.param([ph("h")], {"h": msg("user", "x")}, id="bad-single-message"),
    pytest.param([ph("h")], {"h": ["x"]}, id="bad-list-of-str"),
    pytest.param([ph("h")], {"h": [{"content": "x"}]}, id="bad-no-role"),
    pytest.param([ph("h")], {"h": [msg(None, "x")]}, id="bad-none-role"),  # type: ignore[arg-type]
    pytest.param([ph("h")], {"h": None}, id="bad-none"),
    pytest.param([], {"a": 1}, id="empty-prompt"),
]


@pytest.mark.parametrize(("entries", "variables"), CHAT_CASES)
def test_hand_picked_chat_cases(entries: list[dict[str, Any]], variables: dict[str, Any]) -> None:
    check_chat(entries, variables)


# --------------------------------------------------------------------------------------------
# where we differ from the SDK, on purpose: the SDK crashes or emits messages no API accepts


def test_a_variable_named_self_crashes_the_sdk_but_not_us() -> None:
    with pytest.raises(TypeError):
        sdk_text("{{self}}").compile(**{"self": "me"})
    assert ours_text("{{self}}").compile({"self": "me"}) == [{"role": "user", "content": "me"}]


@pytest.mark.parametrize(
    "content",
    [None, [{"type": "text", "text": "{{a}}"}]],
    ids=["none", "multimodal"],
)
def test_none_and_list_contents_crash_the_sdk_and_pass_through_here(content: Any) -> None:
    entries = [ph("h")]
    variables = {"h": [msg("user", content)], "a": 1}
    with pytest.raises((TypeError, AttributeError)):
        sdk_chat(entries).compile(**variables)
    assert ours_chat(entries).compile(variables) == [msg("user", content)]


def test_empty_list_content_passes_through_here_where_the_sdk_makes_it_empty_text() -> None:
    """The SDK runs `[]` through its template loop, which yields "" for an empty sequence only.

    Any non-empty list crashes it (above), so list contents are not something the SDK handles;
    we keep every list content as it was.
    """
    entries = [ph("h")]
    variables = {"h": [msg("user", [])]}
    assert sdk_chat(entries).compile(**variables) == [msg("user", "")]
    assert ours_chat(entries).compile(variables) == [msg("user", [])]


@pytest.mark.parametrize(
    ("value", "sdk_out"),
    [
        ("text", [msg("NOT_GIVEN", "text")]),
        ([1], [msg("NOT_GIVEN", "[1]")]),
        ([{"content": "x"}], [msg("NOT_GIVEN", "x")]),
        ([msg(5, "x")], [msg(5, "x")]),  # type: ignore[arg-type]
    ],
)
def test_bad_placeholder_values_are_debris_in_the_sdk_and_a_400_here(
    value: Any, sdk_out: list[dict[str, Any]]
) -> None:
    assert sdk_chat([ph("h")]).compile(h=value) == sdk_out
    with pytest.raises(InvalidPromptVariables):
        ours_chat([ph("h")]).compile({"h": value})


def test_unresolved_placeholders_stay_in_sdk_output_and_are_reported_here() -> None:
    entries = [msg("system", "s"), ph("h")]
    assert sdk_chat(entries).compile() == [msg("system", "s"), ph("h")]
    result = ours_chat(entries).compile_result({})
    assert result.messages == [msg("system", "s")]
    assert result.placeholders == ((1, "h"),)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chat_cases(), st.data())
def test_two_namespaces_compile_like_the_sdks_one(
    case: tuple[list[dict[str, Any]], dict[str, Any]], data: st.DataObject
) -> None:
    """`compile(variables, placeholders)` is the SDK's `compile(**{**variables, **placeholders})`,
    also where a placeholder's name is written as a `{{name}}` in text."""
    entries, variables = case
    names = sorted({e["name"] for e in entries if e.get("type") == "placeholder"})
    moved = data.draw(st.sets(st.sampled_from(names)) if names else st.just(set()))
    placeholders = {n: variables[n] for n in moved if n in variables}
    placeholders = {n: v for n, v in placeholders.items() if valid_placeholder_value(v)}
    rest = {n: v for n, v in variables.items() if n not in placeholders}
    if any(n in rest and not valid_placeholder_value(rest[n]) for n in names):
        return
    if "self" in variables:
        return
    ours = ours_chat(entries).compile(rest, placeholders)
    sdk_out = sdk_compile_chat(entries, {**rest, **placeholders})
    if sdk_out is not None:
        assert ours == [m for m in sdk_out if not is_sdk_placeholder(m)]


def test_a_placeholder_name_in_text_is_filled_from_the_placeholders_too() -> None:
    entries = [ph("h"), msg("user", "{{h}}")]
    value = [{"role": "user", "content": "P"}]
    ours = ours_chat(entries).compile({}, {"h": value})
    sdk_out = sdk_compile_chat(entries, {"h": value})
    assert sdk_out is not None
    assert ours == [m for m in sdk_out if not is_sdk_placeholder(m)]
    assert ours[1]["content"] == str(value)
