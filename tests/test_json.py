"""JSON with the json module's meaning (core/_json.py): orjson reads and writes request bodies.

orjson differs from the json module in what it refuses (NaN, 1e400, lone surrogates), in reading
integers past 64 bits as floats, in keeping the last of repeated keys without a word, in its
nesting limits and in writing inf as null. `parse_json_object` and `find_prompt_request` must
answer exactly what a json-module reader answers, and `dump_json` must write what it writes
(floats may be spelt differently, JSON-equal) or refuse what it refuses.
"""

from __future__ import annotations

import json
import re
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prompt_middleware import InMemoryRegistry, PromptMiddleware
from prompt_middleware.core._json import dump_json
from prompt_middleware.core.errors import InvalidPrompt, InvalidPromptRequest, PromptMiddlewareError
from prompt_middleware.core.references import (
    CREDENTIAL_FIELDS,
    PROMPT_FIELDS,
    ModelPrompt,
    find_prompt_request,
    parse_json_object,
    read_prompt_request,
    reference_markers,
)
from prompt_middleware.core.rewrite import RewriteOptions, build_chat_body
from prompt_middleware.testing import CaptureApp

from .helpers import SendLog, chunked_receive, http_scope, text_prompt

READ_FIELDS = frozenset((*PROMPT_FIELDS, *CREDENTIAL_FIELDS, "prompt"))
ALIASES = {"alias": ModelPrompt("greet", model="real")}


def _reject(name: str) -> Any:
    raise ValueError(name)


def reference(body: bytes) -> dict[str, Any] | None:
    """What the json module alone reads (the behaviour before orjson): see parse_json_object."""
    top: list[list[tuple[str, Any]]] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        top.append(pairs)
        return dict(pairs)

    try:
        text = body.decode("utf-8")
        data = json.loads(
            text[1:] if text.startswith("\ufeff") else text,
            parse_constant=_reject,
            object_pairs_hook=pairs_hook,
        )
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    keys = [key for key, _ in top[-1]]
    for key in READ_FIELDS:
        if keys.count(key) > 1:
            raise InvalidPromptRequest(f"The request body repeats {key!r}.", param=key)
    return data


def reference_find(body: bytes) -> tuple[dict[str, Any], Any] | None:
    """`find_prompt_request` by the json module: `reference` then `read_prompt_request`."""
    data = reference(body)
    if data is None:
        if re.search(rb'"(?:prompt_|langfuse_)', body) and not json_module_reads(body):
            raise InvalidPromptRequest(UNREADABLE)  # not forwarded unexamined (issue #16)
        return None
    request = read_prompt_request(data, ALIASES, allow_credentials=True)
    return None if request is None else (data, request)


UNREADABLE = (
    "The request body names prompt_* or langfuse_* fields but is not valid JSON (NaN and"
    " Infinity are not JSON); it was not forwarded."
)


def json_module_reads(body: bytes) -> bool:
    def refuse(name: str) -> Any:
        raise ValueError(name)

    try:
        text = body.decode("utf-8")
        json.loads(text[1:] if text.startswith("\ufeff") else text, parse_constant=refuse)
    except (ValueError, RecursionError):
        return False
    return True


def outcome(fn: Any, *args: Any, **kwargs: Any) -> str:
    """A comparable account of a call: its result with every type spelt out, or its error."""
    try:
        return repr(fn(*args, **kwargs))
    except PromptMiddlewareError as exc:
        return f"{type(exc).__name__}({exc.message!r}, param={exc.param!r})"


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


BODIES = {
    "canonical": b'{"prompt_id":"greet","prompt_variables":{"name":"x"},"n":1}',
    "spaced": b'{"prompt_id": "greet", "prompt_variables": {"name": "x"}, "t": 0.5}',
    "no-fields": b'{"model":"m","messages":[{"role":"user","content":"hi"}]}',
    "alias": b'{"model":"alias","messages":[]}',
    # Integers past 64 bits: orjson reads them as floats.
    "uint64-max": b'{"prompt_id":"greet","seed":18446744073709551615}',
    "uint64-max+1": b'{"prompt_id":"greet","seed":18446744073709551616}',
    "int64-min": b'{"prompt_id":"greet","seed":-9223372036854775808}',
    "int64-min-1": b'{"prompt_id":"greet","seed":-9223372036854775809}',
    "big-nested": b'{"prompt_id":"greet","x":[{"y":1180591620717411303423}]}',
    "big-spaced": b'{"prompt_id": "greet", "x": [1180591620717411303423]}',
    "big-alias": b'{"model":"alias","seed":1180591620717411303423}',
    "big-version": b'{"prompt_id":"greet","prompt_version":18446744073709551617}',
    "big-variable": b'{"prompt_id":"greet","prompt_variables":{"name":99999999999999999999}}',
    "big-no-fields": b'{"model":"m","seed":1180591620717411303423}',
    "float-past-64-bits": b'{"prompt_id":"greet","x":1e19}',
    # Repeated fields the middleware reads: a 400, however the keys are spelt.
    "repeat": b'{"prompt_id":"greet","prompt_id":"other"}',
    "repeat-spaced": b'{"prompt_id": "greet", "prompt_id" : "other"}',
    "repeat-escaped-first": b'{"prompt_id":"greet","\\u0070rompt_id":"other"}',
    "repeat-escaped-underscore": b'{"prompt_id":"greet","prompt\\u005Fid":"other"}',
    "repeat-escaped-last": b'{"prompt_id":"greet","prompt_i\\u0064":"other"}',
    "repeat-variables": b'{"prompt_id":"greet","prompt_variables":{},"prompt_variables":1}',
    "repeat-hosted": b'{"prompt":{"id":"greet"},"prompt":{"id":"other"}}',
    "repeat-secret": b'{"langfuse_secret_key":"s","langfuse_secret_key":null}',
    "repeat-secret-escaped": b'{"langfuse_secret_key":"s","langfuse_secret\\u005fkey":null}',
    "repeat-null": b'{"prompt_version":1,"prompt_id":"greet","prompt_version":null}',
    # Not a repeat of a read field: no error, the last copy wins.
    "repeat-other": b'{"model":"a","model":"b","prompt_id":"greet"}',
    "repeat-nested": b'{"prompt_id":"greet","prompt_variables":{"name":"x","name":"y"}}',
    "mentioned": b'{"prompt_id":"greet","messages":[{"content":"prompt_id"}],"x":{"prompt":1}}',
    "latin-1-escapes": b'{"prompt_id":"greet","prompt_variables":{"name":"caf\\u00e9"}}',
    "other-escapes": b'{"prompt_id":"greet","x":"\\u2019\\/\\n\\u0000"}',
    "small-exponent": b'{"prompt_id":"greet","temperature":1e-07}',
    # What orjson refuses and the json module reads.
    "out-of-range": b'{"prompt_id":"greet","temperature":1e400}',
    "lone-surrogate": b'{"prompt_id":"greet","user":"\\ud800"}',
    "nan": b'{"prompt_id":"greet","temperature":NaN}',
    "bom": b'\xef\xbb\xbf{"prompt_id":"greet"}',
    "two-boms": b'\xef\xbb\xbf\xef\xbb\xbf{"prompt_id":"greet"}',
    "not-an-object": b'["prompt_id"]',
    "invalid-utf8": b'{"prompt_id":"gr\xffeet"}',
    # Nesting: orjson reads 1024 levels and writes 254; the json module stops near 1000.
    **{
        f"depth-{depth}": b'{"prompt_id":"greet","x":' + nested(depth) + b"}"
        for depth in (198, 199, 253, 254, 300, 1022, 1100)
    },
}


@pytest.mark.parametrize("body", list(BODIES.values()), ids=list(BODIES))
def test_parse_reads_what_the_json_module_reads(body: bytes) -> None:
    assert outcome(parse_json_object, body) == outcome(reference, body)


@pytest.mark.parametrize("body", list(BODIES.values()), ids=list(BODIES))
def test_find_prompt_request_reads_what_the_json_module_reads(body: bytes) -> None:
    fast = outcome(find_prompt_request, body, ALIASES, allow_credentials=True)
    assert fast == outcome(reference_find, body)


def test_integers_past_64_bits_reach_the_app_exactly() -> None:
    body = (
        b'{"prompt_id":"greet","prompt_variables":{"name":18446744073709551617},'
        b'"seed":-9223372036854775809,"logit_bias":{"1":1180591620717411303423}}'
    )
    data = parse_json_object(body)
    assert data is not None
    assert data["seed"] == -9223372036854775809
    found = find_prompt_request(body, {})
    assert found is not None
    prompt = text_prompt("greet", "{{name}}")
    out = json.loads(build_chat_body(found[0], found[1], prompt, RewriteOptions()))
    assert out["seed"] == -9223372036854775809
    assert out["logit_bias"] == {"1": 1180591620717411303423}
    assert out["messages"] == [{"role": "user", "content": "18446744073709551617"}]


def test_dump_json_writes_what_the_json_module_writes() -> None:
    data = {
        "text": 'é ’ 🙂 \u2028 \x00\x1f\x7f " \\ /',
        "numbers": [0, -1, 2**63, 0.1, 1e16, 1e-07, -0.0, 1.5, 2**64 - 1],
        "nested": {"a": [True, False, None, {}, []]},
    }
    out = dump_json(data)
    assert json.loads(out) == data
    # Compact and UTF-8, as json.dumps(ensure_ascii=False, separators=(",", ":")) writes.
    assert out.startswith(
        '{"text":"é ’ 🙂 \u2028 \\u0000\\u001f\x7f \\" \\\\ /","numbers":[0,'.encode()
    )


@pytest.mark.parametrize(
    "data",
    [
        {"big": 2**64},
        {"big": -(2**63) - 1},
        {"surrogate": "\ud800"},
        {"deep": json.loads(nested(300))},
        {"subclass": type("S", (str,), {})("s")},
        {1: "int key"},
    ],
    ids=["uint64+1", "int64-1", "surrogate", "depth-300", "str-subclass", "int-key"],
)
def test_what_orjson_refuses_to_write_the_json_module_writes(data: dict[Any, Any]) -> None:
    expected = json.dumps(data, separators=(",", ":"), allow_nan=False)
    assert json.loads(dump_json(data)) == json.loads(expected)


def test_a_number_out_of_range_is_refused_not_written_as_null() -> None:
    with pytest.raises(InvalidPromptRequest, match="cannot represent"):
        dump_json(parse_json_object(b'{"prompt_id":"greet","t":1e400}'))


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("where", ["scalar", "nested"])
def test_a_non_finite_config_value_is_the_registrys_fault(value: float, where: str) -> None:
    """A registry's own data (a YAML file's `.nan`): the prompt is malformed (502), not the
    client's request (issue #16), and never written as null."""
    config = {"temperature": value} if where == "scalar" else {"tools": [{"x": (1, [value])}]}
    with pytest.raises(InvalidPrompt, match="NaN or Infinity"):
        text_prompt("greet", "hi", config=config)


# --- property: any serialisation, repeats spliced in --------------------------------------------

KEYS = st.sampled_from(["prompt_id", "prompt_variables", "prompt", "model", "langfuse_host", "x"])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
    st.sampled_from(["greet", "alias", "prompt_id", "é", "\ud800"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=8,
)
OBJECTS = st.dictionaries(KEYS | st.text(max_size=4), VALUES, max_size=5)


def spell(data: dict[str, Any], style: int) -> bytes:
    if style == 0:  # httpx and openai-python
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode(
            "utf-8", "surrogatepass"
        )
    if style == 1:  # the json module's defaults (requests)
        return json.dumps(data).encode()
    return json.dumps(data, indent=1).encode()


@given(
    data=OBJECTS,
    style=st.integers(0, 2),
    repeat=st.none() | st.tuples(KEYS, VALUES, st.booleans()),
)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_body_reads_as_the_json_module_reads_it(
    data: dict[str, Any], style: int, repeat: tuple[str, Any, bool] | None
) -> None:
    body = spell(data, style)
    if repeat is not None and body.startswith(b"{"):
        key, value, escaped = repeat
        spelt = json.dumps(key, ensure_ascii=True)
        if escaped:  # the first letter as an escape, as a client may spell it
            spelt = f'"\\u{ord(key[0]):04x}{key[1:]}"'
        extra = f"{spelt}:{json.dumps(value)}".encode()
        body = b"{" + extra + (b"," if len(body) > 2 else b"") + body[1:]
    assert outcome(parse_json_object, body) == outcome(reference, body)
    fast = outcome(find_prompt_request, body, ALIASES, allow_credentials=True)
    assert fast == outcome(reference_find, body)


# --- through the middleware -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_client_that_escapes_non_ascii_gets_the_same_rewrite(backend: str) -> None:
    capture = CaptureApp({"ok": True})
    mw = PromptMiddleware(capture, registry=InMemoryRegistry([text_prompt("greet", "{{name}}")]))
    data = {"prompt_id": "greet", "prompt_variables": {"name": "Zoë"}, "seed": 2**64 + 1}
    results = []
    for body in (spell(data, 0), spell(data, 1), spell(data, 2)):

        async def run(body: bytes = body) -> SendLog:
            send = SendLog()
            await mw(http_scope(), chunked_receive([body]), send)
            return send

        assert anyio.run(run, backend=backend).status == 200
        results.append(json.loads(capture.last.body))
    assert results[0] == results[1] == results[2]
    assert results[0]["messages"] == [{"role": "user", "content": "Zoë"}]
    assert results[0]["seed"] == 2**64 + 1


@pytest.mark.parametrize(
    "model",
    [
        b'"support/triage"',
        b'"support\\/triage"',
        b'"\\u0073upport/triage"',
        b'"support\\u002ftriage"',
        b'"caf\\u00e9"',
        b'"gpt\\u002d4o"',
        b'"\\u4e2d\\u6587"',
        b'"\\u4E2D\\u6587"',
    ],
)
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_model_alias_is_found_however_it_is_spelt(model: bytes, backend: str) -> None:
    """Every JSON spelling of an alias binds (a byte pre-filter once missed `support\\/triage`)."""
    capture = CaptureApp({"ok": True})
    bound = ModelPrompt("greet", model="real")
    mw = PromptMiddleware(
        capture,
        registry=InMemoryRegistry([text_prompt("greet", "hi")]),
        model_prompts={"support/triage": bound, "café": bound, "gpt-4o": bound, "中文": bound},
    )

    async def run() -> SendLog:
        send = SendLog()
        body = b'{"model":' + model + b',"messages":[]}'
        await mw(http_scope(), chunked_receive([body]), send)
        return send

    assert anyio.run(run, backend=backend).status == 200
    assert json.loads(capture.last.body)["model"] == "real"


# --- the byte pre-filter ----------------------------------------------------------------------

MARKER_ALIASES = ["alias", "support/triage", "café", 'a"b\n', "gpt-4o", "中文"]


def spell_escaping(value: Any, draw_bool: Any) -> str:
    """JSON text of `value` in which any character of a string may be written as an escape."""
    if isinstance(value, dict):
        items = (
            f"{spell_escaping(k, draw_bool)}:{spell_escaping(v, draw_bool)}"
            for k, v in value.items()
        )
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(spell_escaping(v, draw_bool) for v in value) + "]"
    if not isinstance(value, str):
        return json.dumps(value)
    out = []
    for char in value:
        plain = json.dumps(char, ensure_ascii=False)[1:-1]
        if draw_bool():
            if char == "/" and draw_bool():
                out.append("\\/")
            elif ord(char) <= 0xFFFF:
                out.append(f"\\u{ord(char):04x}" if draw_bool() else f"\\u{ord(char):04X}")
            else:
                out.append(json.dumps(char)[1:-1])  # a surrogate pair
        else:
            out.append(plain)
    return '"' + "".join(out) + '"'


FIELD_NAMES = st.sampled_from(sorted(READ_FIELDS)) | st.sampled_from(["model", "x/y", "é"])


@given(
    data=st.dictionaries(FIELD_NAMES, VALUES | st.sampled_from(MARKER_ALIASES), max_size=3)
    | st.fixed_dictionaries({"model": st.sampled_from(MARKER_ALIASES)}),
    aliases=st.lists(st.sampled_from(MARKER_ALIASES), min_size=1, max_size=3) | st.just([]),
    escaping=st.sampled_from([0.0, 0.2, 0.6, 1.0]),
    flips=st.randoms(use_true_random=False),
)
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_pre_filter_lets_every_reference_through(
    data: dict[str, Any], aliases: list[str], escaping: float, flips: Any
) -> None:
    """A body the markers rule out references no prompt, however its keys and values are spelt."""
    bindings = {alias: ModelPrompt("greet") for alias in aliases}
    body = spell_escaping(data, lambda: flips.random() < escaping).encode("utf-8", "surrogatepass")
    markers = reference_markers(bindings)
    if any(marker.search(body) for marker in markers):
        return
    assert outcome(find_prompt_request, body, bindings, allow_credentials=True) == "None"
    assert not READ_FIELDS & set(data)
    model = data.get("model")
    assert not (isinstance(model, str) and model in bindings)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"\\u0070rompt_id":"greet"}', 200),
        (b'{"prompt\\u005fid":"greet"}', 200),
        (b'{"prompt\\u005Fid":"greet"}', 200),
        (b'{"prompt":{"i\\u0064":"greet"}}', 200),
        (b'{"prompt_id":"greet","langfuse\\u005fhost":"h"}', 400),
        (b'{"\\u006cangfuse_secret_key":"s"}', 400),
    ],
)
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_escaped_field_names_are_read(body: bytes, status: int, backend: str) -> None:
    capture = CaptureApp({"ok": True})
    mw = PromptMiddleware(capture, registry=InMemoryRegistry([text_prompt("greet", "hi")]))

    async def run() -> SendLog:
        send = SendLog()
        await mw(http_scope(), chunked_receive([body]), send)
        return send

    assert anyio.run(run, backend=backend).status == status
    if status == 200:
        assert json.loads(capture.last.body)["messages"] == [{"role": "user", "content": "hi"}]
    else:
        assert capture.requests == []


@pytest.mark.parametrize(
    ("length", "status"),
    [(b"9" * 5000, 413), (b"0" * 5000 + b"2", 200), (b"0", 200), (b"12", 200), (b"x1", 200)],
    ids=["5000-digits", "5000-zeros", "zero", "short", "not-a-number"],
)
def test_a_content_length_of_any_length_is_no_crash(length: bytes, status: int) -> None:
    """int() refuses 4,300+ digits; a header that long must not become a 500."""
    capture = CaptureApp({"ok": True})
    mw = PromptMiddleware(capture, registry=InMemoryRegistry([text_prompt("greet", "hi")]))
    headers = [(b"content-type", b"application/json"), (b"content-length", length)]

    async def run() -> SendLog:
        send = SendLog()
        await mw(http_scope(headers=headers), chunked_receive([b'{"model":"m"}']), send)
        return send

    assert anyio.run(run).status == status
