"""Token usage and model from OpenAI-style responses, JSON or SSE; no I/O, no tracing.

`ask_for_usage` adds `stream_options.include_usage` to a streaming chat request that did not set
it; `SSEUsage(strip=True)` then takes back out of the stream what that option added (the final
usage chunk and the `"usage": null` member of every other chunk), so the client receives the
bytes it would have received without it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from ..core._json import draft_object, dump_json, exact_object

__all__ = ["MAX_JSON_BODY", "SSEUsage", "Usage", "ask_for_usage", "usage_from_json"]

MAX_JSON_BODY = 4 * 2**20
"""Larger non-streaming responses are passed on without looking for their usage."""

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_USAGE_KEY = re.compile(rb'"usage"\s*:\s*')
_COMMA_BEFORE = re.compile(rb",\s*$")
_COMMA_AFTER = re.compile(rb"^\s*,\s*")


@dataclass(slots=True)
class Usage:
    """What a response said about itself; None where it did not say."""

    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    response_id: str | None = None
    finish_reasons: tuple[str, ...] = ()

    def update(self, data: dict[str, Any]) -> None:
        """Take what `data` (a response object, chunk or Responses event) carries."""
        inner = data.get("response")
        if isinstance(inner, dict):  # Responses API events wrap the response object
            data = inner
        model = data.get("model")
        if isinstance(model, str) and model and self.model is None:
            self.model = model
        ident = data.get("id")
        if isinstance(ident, str) and self.response_id is None:
            self.response_id = ident
        choices = data.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                reason = choice.get("finish_reason") if isinstance(choice, dict) else None
                if isinstance(reason, str) and reason not in self.finish_reasons:
                    self.finish_reasons = (*self.finish_reasons, reason)
        usage = data.get("usage")
        if isinstance(usage, dict):
            self.input_tokens = _count(usage, "prompt_tokens", "input_tokens", self.input_tokens)
            self.output_tokens = _count(
                usage, "completion_tokens", "output_tokens", self.output_tokens
            )


def _count(usage: dict[str, Any], chat: str, responses: str, old: int | None) -> int | None:
    for key in (chat, responses):
        value = usage.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return old


def usage_from_json(body: bytes) -> Usage:
    """The usage of a non-streaming response body (empty if it is not a JSON object)."""
    usage = Usage()
    try:
        data = _read_object(body)
    except Exception:  # not ours to judge: the client gets the body as it is
        return usage
    if data is not None:
        usage.update(data)
    return usage


def ask_for_usage(body: bytes) -> bytes | None:
    """`body` with `stream_options.include_usage: true` added, if it is a streaming request that
    left `include_usage` unset; else None (send the body as it is).
    """
    if b'"stream"' not in body:
        return None
    try:
        data = _read_object(body)
    except Exception:
        return None
    if data is None or data.get("stream") is not True:
        return None
    options = data.get("stream_options")
    if options is None:
        data["stream_options"] = {"include_usage": True}
    elif isinstance(options, dict) and "include_usage" not in options:
        data["stream_options"] = {**options, "include_usage": True}
    else:
        return None
    return dump_json(data)


def _read_object(body: bytes) -> dict[str, Any] | None:
    """`body` as the json module reads a JSON object, else None (the middleware's reading)."""
    return exact_object(body, draft_object(body), frozenset())


class SSEUsage:
    """Reads usage from an SSE stream as it passes; with `strip`, removes what
    `ask_for_usage` made the upstream add. Feed every chunk through `feed`, then `flush`.

    Without `strip` the bytes are returned as given. With it, a partial trailing event is held
    back until it is complete (a client dispatches an event only at its blank line anyway).
    """

    __slots__ = ("_held", "_strip", "usage")

    def __init__(self, *, strip: bool = False) -> None:
        self._strip = strip
        self._held = b""
        self.usage = Usage()

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk if self._held else chunk
        out: list[bytes] = []
        start = 0
        for match in _EVENT_END.finditer(data):
            event = data[start : match.end()]
            start = match.end()
            out.append(self._event(event))
        self._held = data[start:]
        if not self._strip:
            return chunk
        return b"".join(out)

    def flush(self) -> bytes:
        """What is still held at the end of the stream (an unterminated last event)."""
        held, self._held = self._held, b""
        if not held:
            return b""
        kept = self._event(held)
        return kept if self._strip else b""

    def _event(self, event: bytes) -> bytes:
        start = event.find(b"data:")
        if start == -1 or event.find(b"data:", start + 5) != -1:
            return event  # no data, or a multi-line data event: not a usage chunk
        begin = start + 6 if event[start + 5 : start + 6] == b" " else start + 5
        end = len(event)
        for newline in (b"\n", b"\r"):
            at = event.find(newline, begin)
            if at != -1:
                end = min(end, at)
        payload = event[begin:end]
        if not payload.lstrip().startswith(b"{"):
            return event
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return event
        if not isinstance(data, dict):
            return event
        self.usage.update(data)
        if not self._strip or "usage" not in data:
            return event
        if data["usage"] is not None and data.get("choices") == []:
            return b""  # the extra chunk include_usage asked for
        kept = _without_usage(payload)
        return event if kept is None else event[:begin] + kept + event[end:]


def _without_usage(payload: bytes) -> bytes | None:
    """`payload` (one JSON object) without its `"usage"` member, or None if that is not clear."""
    matches = list(_USAGE_KEY.finditer(payload))
    if len(matches) != 1:
        return None
    key = matches[0]
    value_end = _value_end(payload, key.end())
    if value_end is None:
        return None
    before, after = payload[: key.start()], payload[value_end:]
    comma = _COMMA_BEFORE.search(before)
    if comma is not None:
        return before[: comma.start()] + after
    comma_after = _COMMA_AFTER.match(after)
    if comma_after is not None:
        return before + after[comma_after.end() :]
    return before + after


def _value_end(text: bytes, at: int) -> int | None:
    """Index just past the JSON value at `at`: `null` or an object (strings inside are skipped)."""
    if text.startswith(b"null", at):
        return at + 4
    if text[at : at + 1] != b"{":
        return None
    depth = 0
    index = at
    in_string = False
    while index < len(text):
        char = text[index]
        if in_string:
            if char == 0x5C:  # backslash: skip the escaped character
                index += 1
            elif char == 0x22:
                in_string = False
        elif char == 0x22:
            in_string = True
        elif char == 0x7B:
            depth += 1
        elif char == 0x7D:
            depth -= 1
            if depth == 0:
                return index + 1
        index += 1
    return None
