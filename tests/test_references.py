"""Reading a request body (core/references.py): one reader per reference shape, validated once.

Each shape (prompt fields, a model alias, OpenAI's prompt object) gives a complete request; every
malformed prompt field is an OpenAI-shaped 400 naming it, on chat and Responses paths; repeated
prompt fields are refused; property tests show the reader and the body builders raise only our
own errors on arbitrary JSON and bytes, and build valid JSON without prompt or credential fields.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from prompt_middleware import InMemoryRegistry, PromptMiddleware
from prompt_middleware.core.errors import InvalidPromptRequest, PromptMiddlewareError
from prompt_middleware.core.prompts import PromptRef
from prompt_middleware.core.references import (
    ModelPrompt,
    PromptRequest,
    parse_json_object,
    read_prompt_request,
)
from prompt_middleware.core.rewrite import RewriteOptions, build_chat_body, build_responses_body
from prompt_middleware.testing import CaptureApp

from .helpers import asgi_call, chat_prompt, forwarded, openai_error, text_prompt
from .strategies import (
    FUZZ_PROMPTS,
    MODEL_PROMPTS,
    OPTIONS,
    STRIPPED,
    assert_sendable,
    bodies,
    bounded,
)

pytestmark = pytest.mark.anyio

# --- one reader per reference shape ---------------------------------------------------------------

ALIASES = {"alias": ModelPrompt("bound", model="real", prompt_label="staging")}


def read(body: dict[str, Any]) -> PromptRequest | None:
    return read_prompt_request(body, ALIASES, allow_credentials=True)


def test_each_shape_gives_a_complete_request() -> None:
    fields = read({"prompt_id": "a", "prompt_version": 2, "prompt_variables": {"x": 1}})
    assert fields == PromptRequest(PromptRef("a", 2, None), {"x": 1})
    alias = read({"model": "alias", "prompt_variables": {"x": 1}})
    assert alias == PromptRequest(
        PromptRef("bound", None, "staging"), {"x": 1}, None, ALIASES["alias"]
    )
    image = {"type": "input_image", "image_url": "https://x/y.png"}
    hosted = read(
        {
            "prompt": {
                "id": "h",
                "version": "3",
                "variables": {"t": {"type": "input_text", "text": "T"}, "i": image},
            }
        }
    )
    assert hosted is not None
    assert hosted.ref == PromptRef("h", 3, None)
    assert hosted.variables["t"] == "T"
    (marker,) = hosted.parts
    assert hosted.variables["i"] == marker
    assert hosted.parts[marker].variable == "i"
    assert hosted.parts[marker].value == image


def test_an_explicit_prompt_id_wins_over_an_alias() -> None:
    request = read({"model": "alias", "prompt_id": "own"})
    assert request is not None
    assert request.ref == PromptRef("own")
    assert request.model_prompt is None


def test_prompt_fields_win_over_openais_prompt_object() -> None:
    request = read({"prompt_id": "own", "prompt": {"id": "other"}})
    assert request is not None
    assert request.ref.name == "own"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt_id": "x\ud800"}, "prompt_id"),
        ({"prompt_id": "a", "prompt_label": "\udfff"}, "prompt_label"),
        ({"prompt": {"id": "\ud800"}}, "prompt.id"),
        ({"prompt": {"id": "a", "version": 0}}, "prompt.version"),
        ({"prompt_id": "a", "prompt_version": True}, "prompt_version"),
        ({"prompt_id": "a", "prompt_version": 1, "prompt_label": "l"}, "prompt_label"),
    ],
)
def test_invalid_references_name_their_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidPromptRequest) as info:
        read(body)
    assert info.value.param == param


def test_openais_prompt_object_accepts_prompt_id_for_id() -> None:
    request = read({"prompt": {"prompt_id": "pmpt_1", "version": "2"}})
    assert request is not None
    assert request.ref == PromptRef("pmpt_1", 2, None)
    both = read({"prompt": {"id": "wins", "prompt_id": "other"}})
    assert both is not None
    assert both.ref.name == "wins"
    with pytest.raises(InvalidPromptRequest) as info:
        read({"prompt": {"prompt_id": 5}})
    assert info.value.param == "prompt.prompt_id"


PROMPTS = [
    text_prompt("greet", "Hello {{name}}!"),
    chat_prompt(
        "support",
        [
            {"role": "system", "content": "You help with {{product}}."},
            {"type": "placeholder", "name": "history"},
        ],
    ),
]


# --- wrong types for every prompt field -----------------------------------------------------------


WRONG_TYPES: list[Any] = [
    ({"prompt_id": ""}, "prompt_id", "invalid_prompt_request"),
    ({"prompt_id": 0}, "prompt_id", "invalid_prompt_request"),
    ({"prompt_id": 1.5}, "prompt_id", "invalid_prompt_request"),
    ({"prompt_id": True}, "prompt_id", "invalid_prompt_request"),
    ({"prompt_id": {}}, "prompt_id", "invalid_prompt_request"),
    ({"prompt_id": ["greet"]}, "prompt_id", "invalid_prompt_request"),
    ({"prompt_version": 1}, "prompt_id", "invalid_prompt_request"),
    ({"prompt_label": "x"}, "prompt_id", "invalid_prompt_request"),
    ({"prompt_id": "greet", "prompt_variables": "x"}, "prompt_variables", "invalid_prompt_request"),
    ({"prompt_id": "greet", "prompt_variables": 1}, "prompt_variables", "invalid_prompt_request"),
    (
        {"prompt_id": "greet", "prompt_variables": True},
        "prompt_variables",
        "invalid_prompt_request",
    ),
    ({"prompt_id": "greet", "prompt_variables": []}, "prompt_variables", "invalid_prompt_request"),
    ({"prompt_id": "greet", "prompt_version": "1"}, "prompt_version", "invalid_prompt_request"),
    ({"prompt_id": "greet", "prompt_version": 1.0}, "prompt_version", "invalid_prompt_request"),
    ({"prompt_id": "greet", "prompt_version": 0}, "prompt_version", "invalid_prompt_request"),
    ({"prompt_id": "greet", "prompt_version": -1}, "prompt_version", "invalid_prompt_request"),
    ({"prompt_id": "greet", "prompt_version": False}, "prompt_version", "invalid_prompt_request"),
    ({"prompt_id": "greet", "prompt_version": [1]}, "prompt_version", "invalid_prompt_request"),
    ({"prompt_id": "greet", "prompt_label": 1}, "prompt_label", "invalid_prompt_request"),
    ({"prompt_id": "greet", "prompt_label": ""}, "prompt_label", "invalid_prompt_request"),
    ({"prompt_id": "greet", "prompt_label": ["a"]}, "prompt_label", "invalid_prompt_request"),
    ({"prompt_id": "greet", "prompt_label": {}}, "prompt_label", "invalid_prompt_request"),
    ({"prompt": {}}, "prompt.id", "invalid_prompt_request"),
    ({"prompt": {"id": 7}}, "prompt.id", "invalid_prompt_request"),
    ({"prompt": {"id": "greet", "version": "v1"}}, "prompt.version", "invalid_prompt_request"),
    (
        {"prompt": {"id": "greet", "version": "9" * 5000}},
        "prompt.version",
        "invalid_prompt_request",
    ),
    ({"prompt": {"id": "greet", "version": "١"}}, "prompt.version", "invalid_prompt_request"),
    ({"prompt": {"id": "greet", "variables": []}}, "prompt.variables", "invalid_prompt_request"),
    (
        {"prompt": {"id": "greet", "variables": {"name": {"type": "input_text"}}}},
        "prompt.variables",
        "invalid_prompt_variables",
    ),
    (
        {"prompt_id": "support", "prompt_variables": {"history": "text"}},
        "prompt_variables",
        "invalid_prompt_variables",
    ),
    (
        {"prompt_id": "support", "prompt_variables": {"history": [None]}},
        "prompt_variables",
        "invalid_prompt_variables",
    ),
    ({"prompt_id": "greet", "langfuse_host": 5}, "langfuse_host", "request_credentials_disabled"),
    (
        {"prompt_id": "greet", "langfuse_secret_key": ["sk"]},
        "langfuse_secret_key",
        "request_credentials_disabled",
    ),
]


@pytest.mark.parametrize(("fields", "param", "code"), WRONG_TYPES)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
async def test_wrong_types_for_prompt_fields_are_400(
    fields: dict[str, Any], param: str, code: str, path: str, capture: CaptureApp
) -> None:
    mw = PromptMiddleware(capture, registry=InMemoryRegistry(PROMPTS))
    send = await asgi_call(mw, json.dumps({"model": "m", **fields}).encode(), path=path)
    err = openai_error(send, 400, code)
    assert err["param"] == param
    assert err["type"] == "invalid_request_error"
    assert capture.requests == []


async def test_responses_input_of_the_wrong_type_is_400(capture: CaptureApp) -> None:
    mw = PromptMiddleware(capture, registry=InMemoryRegistry(PROMPTS))
    body = {"prompt": {"id": "greet"}, "input": {"not": "a list"}}
    send = await asgi_call(mw, json.dumps(body).encode(), path="/v1/responses")
    assert openai_error(send, 400, "invalid_prompt_request")["param"] == "input"
    assert capture.requests == []


async def test_number_out_of_range_in_a_prompt_request_is_400(capture: CaptureApp) -> None:
    mw = PromptMiddleware(capture, registry=InMemoryRegistry(PROMPTS))
    err = openai_error(
        await asgi_call(mw, b'{"prompt_id":"greet","temperature":1e400}'),
        400,
        "invalid_prompt_request",
    )
    assert "1e400" in err["message"]
    assert capture.requests == []
    # Not ours to judge without a prompt reference: passed on as sent.
    plain = b'{"model":"m","messages":[{"role":"user","content":"a prompt"}],"temperature":1e400}'
    assert (await asgi_call(mw, plain)).status == 200
    assert capture.last.body == plain


# --- repeated keys --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"prompt_id": "greet", "prompt_id": "support"}',
        b'{"prompt_id": "greet", "prompt_variables": {}, "prompt_variables": {"name": 1}}',
        b'{"prompt_id": "greet", "prompt_label": "a", "prompt_label": "b"}',
        b'{"prompt_id": "greet", "prompt_version": 1, "prompt_version": null}',
        b'{"prompt_id": "greet", "\\u0070rompt_id": "support"}',
        b'{"prompt": {"id": "greet"}, "prompt": {"id": "support"}}',
    ],
)
async def test_repeated_prompt_fields_are_400(body: bytes, capture: CaptureApp) -> None:
    mw = PromptMiddleware(capture, registry=InMemoryRegistry(PROMPTS))
    err = openai_error(await asgi_call(mw, body), 400, "invalid_prompt_request")
    assert "repeats" in err["message"]
    assert err["param"] in (
        "prompt_id",
        "prompt_variables",
        "prompt_label",
        "prompt_version",
        "prompt",
    )
    assert capture.requests == []


async def test_a_repeated_secret_cannot_be_shadowed_past_the_middleware(
    capture: CaptureApp,
) -> None:
    """`null` after the secret would make us see no credentials and forward the original bytes,
    secret included, to a parser that may keep the first copy."""
    mw = PromptMiddleware(capture, registry=InMemoryRegistry(PROMPTS))
    body = (
        b'{"model":"m","messages":[],'
        b'"langfuse_secret_key":"sk-lf-shadow","langfuse_secret_key":null}'
    )
    send = await asgi_call(mw, body)
    err = openai_error(send, 400, "invalid_prompt_request")
    assert err["param"] == "langfuse_secret_key"
    assert b"sk-lf-shadow" not in send.body
    assert capture.requests == []


async def test_other_repeated_keys_keep_json_semantics(capture: CaptureApp) -> None:
    mw = PromptMiddleware(capture, registry=InMemoryRegistry(PROMPTS))
    # Elsewhere the last copy wins, as in every mainstream JSON parser; the rewrite re-serialises.
    body = (
        b'{"model":"a","model":"b","prompt_id":"greet","prompt_variables":{"name":"x","name":"y"}}'
    )
    assert (await asgi_call(mw, body)).status == 200
    sent = forwarded(capture)
    assert sent["model"] == "b"
    assert sent["messages"] == [{"role": "user", "content": "Hello y!"}]
    # Without a prompt reference nothing is parsed for its own sake: the bytes go on as sent.
    plain = b'{"model":"a","model":"b","messages":[]}'
    assert (await asgi_call(mw, plain)).status == 200
    assert capture.last.body == plain


# --- properties: arbitrary JSON and bytes ---------------------------------------------------------


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
        prompt = FUZZ_PROMPTS.get(request.ref.name, FUZZ_PROMPTS["greet"])
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
