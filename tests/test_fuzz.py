"""Issue #7, property tests (hypothesis).

- The request reader (`parse_json_object`, `read_prompt_request`, the body builders) raises
  nothing but our own `PromptMiddlewareError`s on arbitrary JSON and arbitrary bytes, and what it
  builds is valid JSON without prompt or credential fields; every error it raises can be sent.
- `fill_template` inserts each value exactly once (never re-expanded); `Prompt.compile`
  never raises on arbitrary templates and JSON variables (chat placeholders: only our errors).
- gzip / deflate decoding round-trips within its limit, 413s past it, and corrupt input raises
  only our errors.
- The whole middleware, on arbitrary bodies and both backends: never a 5xx, never a half-baked
  forward.

Example counts are bounded so the file takes seconds; deadline=None for slow CI machines.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from prompt_middleware import InMemoryRegistry, PromptMiddleware
from prompt_middleware.core.encoding import decode_body
from prompt_middleware.core.errors import (
    InvalidContentEncoding,
    PromptMiddlewareError,
    RequestTooLarge,
)
from prompt_middleware.core.prompts import fill_template
from prompt_middleware.core.references import (
    CREDENTIAL_FIELDS,
    PROMPT_FIELDS,
    ModelPrompt,
    parse_json_object,
    read_prompt_request,
)
from prompt_middleware.core.rewrite import RewriteOptions, build_chat_body, build_responses_body

from .helpers import Recorder, SendLog, chat_prompt, chunked_receive, http_scope, text_prompt


def bounded(examples: int) -> Callable[[Any], Any]:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- strategies ---------------------------------------------------------------------------------

TRICKY = [
    "",
    "{{",
    "}}",
    "{{name}}",
    "{{ name }}",
    "{{history}}",
    "\x00",
    "\ud800",
    "\udfff",
    "é",
    "🙂",
    "\u2028",
    "prompt_id",
    "langfuse_secret_key",
    "\x00part:deadbeef\x00",
]
ANY_CHAR = st.characters(exclude_categories=())  # surrogates included
TEXT = st.one_of(st.text(ANY_CHAR, max_size=12), st.sampled_from(TRICKY))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(TEXT, children, max_size=4)
    ),
    max_leaves=12,
)
ROLES = st.sampled_from(["system", "user", "assistant", "tool"])
MESSAGES = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {
                "role": ROLES,
                "content": st.one_of(TEXT, st.none(), st.lists(JSON_VALUES, max_size=2)),
            },
            optional={"name": TEXT, "tool_calls": JSON_VALUES},
        ),
        JSON_VALUES,
    ),
    max_size=3,
)
PARTS = st.one_of(
    st.fixed_dictionaries({"type": st.just("input_text"), "text": st.one_of(TEXT, JSON_VALUES)}),
    st.fixed_dictionaries(
        {"type": st.just("input_image")},
        optional={"image_url": st.one_of(TEXT, JSON_VALUES), "detail": JSON_VALUES},
    ),
    st.fixed_dictionaries(
        {"type": st.just("input_file")},
        optional={"file_id": TEXT, "file_data": JSON_VALUES, "filename": TEXT},
    ),
)
VARIABLE_NAMES = st.one_of(st.sampled_from(["name", "history", "a", "b", "product"]), TEXT)
VARIABLES = st.dictionaries(VARIABLE_NAMES, st.one_of(JSON_VALUES, MESSAGES, PARTS), max_size=5)
PROMPT_NAMES = st.sampled_from(["greet", "support", "two-slots", "configured", "nope", ""])


def either(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly valid values for a field, sometimes anything at all."""
    return st.one_of(valid, valid, valid, JSON_VALUES)


FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "prompt_id": either(PROMPT_NAMES),
    "prompt_variables": either(VARIABLES),
    "prompt_version": either(st.integers(min_value=-1, max_value=3)),
    "prompt_label": either(st.sampled_from(["production", "latest", "staging", ""])),
    "prompt": either(
        st.fixed_dictionaries(
            {"id": either(PROMPT_NAMES)},
            optional={
                "version": either(st.sampled_from([1, "1", "02", 0, "x", "9" * 30])),
                "variables": either(VARIABLES),
            },
        )
    ),
    "langfuse_public_key": TEXT,
    "langfuse_secret_key": TEXT,
    "langfuse_secret": TEXT,
    "langfuse_host": TEXT,
    "model": either(st.sampled_from(["m", "langfuse/gpt-4o", "alias"])),
    "messages": either(MESSAGES),
    "input": either(st.one_of(TEXT, MESSAGES)),
    "temperature": JSON_VALUES,
    "tools": JSON_VALUES,
}


# How often (out of 20) a body has each field: mostly prompt requests, credentials now and then.
CHANCES = {"prompt_id": 15, "prompt_variables": 12, "model": 10, "messages": 10, "input": 8}
CHANCES |= {"prompt": 6, "prompt_version": 3, "prompt_label": 3, "temperature": 4, "tools": 4}
CHANCES |= dict.fromkeys(CREDENTIAL_FIELDS, 1)


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(st.dictionaries(TEXT, JSON_VALUES, max_size=3))
    # A fair die: hypothesis' own integers and samples lean towards their first values.
    die = draw(st.randoms(use_true_random=True))
    for key, chance in CHANCES.items():
        if die.randrange(20) < chance:
            body[key] = draw(FIELDS[key])
    return body


PROMPTS = {
    p.name: p
    for p in [
        text_prompt("greet", "Hello {{name}}, {{ a }}{{b}}!"),
        chat_prompt(
            "support",
            [
                {"role": "system", "content": "You help with {{product}} {{name}}."},
                {"type": "placeholder", "name": "history"},
            ],
        ),
        chat_prompt(
            "two-slots",
            [
                {"type": "placeholder", "name": "a"},
                {"role": "user", "content": "{{b}}"},
                {"type": "placeholder", "name": "b"},
            ],
        ),
        text_prompt(
            "configured",
            "{{name}}",
            config={"model": "real", "temperature": 0.5, "tools": [], "max_output_tokens": 9},
        ),
    ]
}
MODEL_PROMPTS = {"alias": ModelPrompt("support", model="gpt-real")}
OPTIONS = st.builds(
    RewriteOptions,
    strict_variables=st.booleans(),
    client_messages=st.sampled_from(["replace", "append"]),
    text_role=st.sampled_from(["user", "system"]),
)
STRIPPED = frozenset((*PROMPT_FIELDS, *CREDENTIAL_FIELDS))


def assert_sendable(error: PromptMiddlewareError) -> None:
    """Everything `send_error` does with it works: a 4xx/5xx JSON body."""
    assert 400 <= error.status_code < 600
    body = json.dumps(error.to_dict(), ensure_ascii=False).encode()
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}


# --- the request reader ---------------------------------------------------------------------


@given(body=bodies(), options=OPTIONS, responses=st.booleans(), allow=st.booleans())
@bounded(400)
def test_reader_and_builders_raise_only_our_errors(
    body: dict[str, Any], options: RewriteOptions, responses: bool, allow: bool
) -> None:
    raw = json.dumps(body).encode("ascii")  # escapes lone surrogates: always parseable
    try:
        data = parse_json_object(raw)
        assert data == body
        request = read_prompt_request(data, MODEL_PROMPTS, allow_credentials=allow)
        if request is None:
            event("no prompt reference")
            assert not any(data.get(f) is not None for f in STRIPPED)
            return
        prompt = PROMPTS.get(request.ref.name, PROMPTS["greet"])
        build = build_responses_body if responses else build_chat_body
        out = build(data, request, prompt, options)
    except PromptMiddlewareError as exc:
        event(f"error {exc.code}")
        assert_sendable(exc)
        return
    event("rewritten")
    sent = json.loads(out.decode("utf-8"))
    assert not STRIPPED & set(sent)
    assert isinstance(sent["input" if responses else "messages"], list)
    if not isinstance(data.get("prompt"), dict) or not responses:
        # Everything else the client sent is kept (model and config keys may be set).
        for key, value in data.items():
            if key not in STRIPPED and key not in ("model", "messages", "input", "prompt"):
                assert sent[key] == value


@given(raw=st.binary(max_size=200))
@bounded(300)
def test_arbitrary_bytes_parse_or_not_but_never_crash(raw: bytes) -> None:
    try:
        data = parse_json_object(raw)
    except PromptMiddlewareError as exc:
        assert_sendable(exc)
        return
    assert data is None or isinstance(data, dict)


@given(body=bodies(), cut=st.integers(min_value=0), noise=st.binary(min_size=1, max_size=4))
@bounded(300)
def test_mangled_json_never_crashes(body: dict[str, Any], cut: int, noise: bytes) -> None:
    raw = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    at = cut % (len(raw) + 1)
    for candidate in (raw[:at], raw[:at] + noise + raw[at:], raw + raw[at:]):
        try:
            data = parse_json_object(candidate)
            if data is not None:
                read_prompt_request(data, MODEL_PROMPTS, allow_credentials=True)
        except PromptMiddlewareError as exc:
            assert_sendable(exc)


# --- content-encoding -------------------------------------------------------------------------

CODINGS = st.sampled_from(["gzip", "x-gzip", "deflate"])


def compress(data: bytes, coding: str, level: int) -> bytes:
    if coding == "deflate":
        return zlib.compress(data, level)
    return gzip.compress(data, compresslevel=level)


@given(
    data=st.binary(max_size=3000) | st.integers(0, 5000).map(lambda n: b"a" * n),
    coding=CODINGS,
    level=st.integers(min_value=0, max_value=9),
    limit=st.integers(min_value=1, max_value=4000),
)
@bounded(300)
def test_decoding_round_trips_within_the_limit(
    data: bytes, coding: str, level: int, limit: int
) -> None:
    packed = compress(data, coding, level)
    if len(data) <= limit:
        assert decode_body(packed, coding, limit) == data
    else:
        with pytest.raises(RequestTooLarge):
            decode_body(packed, coding, limit)


@given(
    data=st.binary(min_size=1, max_size=300),
    coding=CODINGS,
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(1, 255)), max_size=3),
    cut=st.integers(min_value=0),
)
@bounded(300)
def test_corrupted_compressed_bodies_raise_only_our_errors(
    data: bytes, coding: str, flips: list[tuple[int, int]], cut: int
) -> None:
    packed = bytearray(compress(data, coding, 6))
    for at, mask in flips:
        packed[at % len(packed)] ^= mask
    mangled = bytes(packed[: len(packed) - cut % 4])
    try:
        out = decode_body(mangled, coding, 10_000)
    except (InvalidContentEncoding, RequestTooLarge) as exc:  # anything else fails the test
        assert_sendable(exc)
    else:
        assert len(out) <= 10_000


# --- compiling ------------------------------------------------------------------------------

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
# Values that look like templates themselves: they must come out verbatim.
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


# --- the whole middleware ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@given(body=bodies(), chunks=st.integers(min_value=1, max_value=5), responses=st.booleans())
@bounded(60)
def test_middleware_never_answers_5xx(
    backend: str, body: dict[str, Any], chunks: int, responses: bool
) -> None:
    raw = json.dumps(body).encode("ascii")
    assume(not any(isinstance(v, float) and math.isinf(v) for v in body.values()))
    size = max(1, len(raw) // chunks)
    parts = [raw[i : i + size] for i in range(0, len(raw), size)] or [b""]
    recorder = Recorder()
    mw = PromptMiddleware(
        recorder, registry=InMemoryRegistry(PROMPTS.values()), model_prompts=MODEL_PROMPTS
    )
    path = "/v1/responses" if responses else "/v1/chat/completions"

    async def run() -> SendLog:
        send = SendLog()
        with anyio.fail_after(5):
            await mw(http_scope(path), chunked_receive(parts), send)
        return send

    send = anyio.run(run, backend=backend)
    assert send.status < 500, send.body
    if not recorder.calls:
        assert 400 <= send.status < 500
        return
    call = recorder.last
    if call.body == raw:
        return  # passed through untouched
    sent = json.loads(call.body)
    assert not STRIPPED & set(sent)
    assert call.header(b"content-length") == [str(len(call.body)).encode()]
