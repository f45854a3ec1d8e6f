"""Reading usage from responses, and taking back out what include_usage added to a stream."""

from __future__ import annotations

import json

import pytest

from prompt_middleware.observability.usage import SSEUsage, ask_for_usage, usage_from_json

from .fake_openai import INPUT_TOKENS, OUTPUT_TOKENS, RESPONSE_MODEL, stream


def _through(
    events: list[bytes], *, strip: bool, size: int | None = None
) -> tuple[bytes, SSEUsage]:
    reader = SSEUsage(strip=strip)
    data = b"".join(events)
    pieces = events if size is None else [data[i : i + size] for i in range(0, len(data), size)]
    out = b"".join(reader.feed(piece) for piece in pieces) + reader.flush()
    return out, reader


@pytest.mark.parametrize("size", [None, 1, 7, 64])
def test_strip_gives_the_stream_without_the_option(size: int | None) -> None:
    out, reader = _through(stream(include_usage=True), strip=True, size=size)
    assert out == b"".join(stream(include_usage=False))
    assert reader.usage.input_tokens == INPUT_TOKENS
    assert reader.usage.output_tokens == OUTPUT_TOKENS
    assert reader.usage.model == RESPONSE_MODEL
    assert reader.usage.finish_reasons == ("stop",)


@pytest.mark.parametrize("size", [None, 3])
def test_without_strip_bytes_pass_as_they_are(size: int | None) -> None:
    events = stream(include_usage=True)
    out, reader = _through(events, strip=False, size=size)
    assert out == b"".join(events)
    assert reader.usage.output_tokens == OUTPUT_TOKENS


def _event(
    data: object, *, separators: tuple[str, str] = (",", ":"), end: bytes = b"\n\n"
) -> bytes:
    return b"data: " + json.dumps(data, separators=separators).encode() + end


def test_spaced_json_and_crlf_events() -> None:
    chunk = {"id": "c", "choices": [{"delta": {"content": "x"}}], "usage": None}
    plain = {"id": "c", "choices": [{"delta": {"content": "x"}}]}
    last = {"id": "c", "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}}
    for separators in ((", ", ": "), (",", ":")):
        for end in (b"\r\n\r\n", b"\n\n"):
            events = [_event(chunk, separators=separators, end=end)]
            events.append(_event(last, separators=separators, end=end))
            events.append(b"data: [DONE]" + end)
            out, reader = _through(events, strip=True, size=5)
            want = _event(plain, separators=separators, end=end) + b"data: [DONE]" + end
            assert out == want
            assert (reader.usage.input_tokens, reader.usage.output_tokens) == (2, 3)


def test_usage_first_and_in_a_content_chunk() -> None:
    first = {"usage": None, "id": "c", "choices": [{"delta": {"content": "a"}}]}
    with_usage = {
        "id": "c",
        "choices": [{"delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "details": {"x": "}{"}},
    }
    out, reader = _through([_event(first), _event(with_usage)], strip=True)
    assert out == (
        _event({"id": "c", "choices": [{"delta": {"content": "a"}}]})
        + _event({"id": "c", "choices": [{"delta": {}, "finish_reason": "stop"}]})
    )
    assert reader.usage.output_tokens == 2


def test_unclear_events_are_left_alone() -> None:
    nested_twice = {"id": "c", "choices": [{"usage": None}], "usage": None}
    events = [
        _event(nested_twice),
        b": a comment\n\n",
        b"event: ping\ndata: not json\n\n",
        b'data: {"a":\ndata: 1}\n\n',
    ]
    out, _ = _through(events, strip=True)
    assert out == b"".join(events)


def test_unterminated_last_event_is_flushed() -> None:
    out, reader = _through(
        [b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":5}}'], strip=True
    )
    assert out == b""
    assert reader.usage.input_tokens == 5
    out, _ = _through([b'data: {"id":"c"}'], strip=True)
    assert out == b'data: {"id":"c"}'


def test_responses_stream_usage() -> None:
    completed = {
        "type": "response.completed",
        "response": {
            "id": "resp_1",
            "model": "gpt-4.1",
            "usage": {"input_tokens": 9, "output_tokens": 4},
        },
    }
    events = [b"event: response.completed\n" + _event(completed)]
    out, reader = _through(events, strip=False)
    assert out == events[0]
    assert (reader.usage.model, reader.usage.input_tokens, reader.usage.output_tokens) == (
        "gpt-4.1",
        9,
        4,
    )


def test_usage_from_json() -> None:
    body = json.dumps(
        {"model": "m-1", "id": "x", "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    ).encode()
    usage = usage_from_json(body)
    assert (usage.model, usage.input_tokens, usage.output_tokens) == ("m-1", 3, 1)
    assert usage_from_json(b"not json").input_tokens is None
    assert usage_from_json(b"[1]").model is None
    bools = usage_from_json(b'{"usage": {"prompt_tokens": true}}')
    assert bools.input_tokens is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"stream": True}, {"stream": True, "stream_options": {"include_usage": True}}),
        (
            {"stream": True, "stream_options": {"include_obfuscation": False}},
            {
                "stream": True,
                "stream_options": {"include_obfuscation": False, "include_usage": True},
            },
        ),
        ({"stream": True, "stream_options": {"include_usage": False}}, None),
        ({"stream": True, "stream_options": {"include_usage": True}}, None),
        ({"stream": False}, None),
        ({"model": "m"}, None),
        ({"stream": "yes"}, None),
        ({"stream": True, "stream_options": "odd"}, None),
    ],
)
def test_ask_for_usage(body: dict[str, object], expected: dict[str, object] | None) -> None:
    asked = ask_for_usage(json.dumps(body).encode())
    assert (None if asked is None else json.loads(asked)) == expected


def test_ask_for_usage_ignores_non_json() -> None:
    assert ask_for_usage(b'{"stream": true') is None
    assert ask_for_usage(b'["stream"]') is None
