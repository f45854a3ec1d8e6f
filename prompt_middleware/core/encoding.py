"""Compressed request bodies, decoded within a size bound.

The middleware must see a compressed body's JSON to find a prompt reference in it, so it
inflates `gzip` (`x-gzip`) and `deflate` bodies, and `br` / `zstd` ones where their decoder is
installed (the `brotli` and `zstd` extras: Google's `brotli`, `zstandard`), never past
`max_body_size` bytes of output: a bomb costs at most that much memory and is answered 413.
A coding it cannot decode (those without their decoder, unknown ones, several stacked) is
refused on the paths it guards: such a body would go on unexamined, prompt fields and
credentials included.
"""

from __future__ import annotations

import importlib.util
import zlib
from collections.abc import Iterable
from typing import Any

from .errors import InvalidContentEncoding, RequestTooLarge

__all__ = ["content_coding", "decodable", "decode_body", "installed_decoders"]

# Coding name -> zlib `wbits`: gzip container; zlib container (raw deflate tried if it fails).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
# Input is fed to zlib in pieces of this size (its leftovers are copied at each stream's end).
_PIECE = 2**16
# Real clients send one gzip member; many tiny ones would only burn CPU.
_MAX_MEMBERS = 64


def content_coding(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The codings named by `content-encoding`, lower-cased and comma-joined; `""` for none.

    `identity` counts as none. Stacked codings (`gzip, br`) come back as one string, which
    `decodable` refuses.
    """
    codings = []
    for name, value in headers:
        if name.lower() == b"content-encoding":
            for token in value.decode("latin-1").lower().split(","):
                coding = token.strip()
                if coding and coding != "identity":
                    codings.append(coding)
    return ", ".join(codings)


def installed_decoders() -> frozenset[str]:
    """The codings beyond gzip and deflate whose decoder is installed (`br`, `zstd`)."""
    found = (("br", "brotli"), ("zstd", "zstandard"))
    return frozenset(c for c, module in found if importlib.util.find_spec(module) is not None)


_OPTIONAL = installed_decoders()


def decodable_in_words() -> str:
    """The codings `decode_body` undoes in this install, for messages: "gzip, deflate or br"."""
    codings = ["gzip", "deflate", *sorted(_OPTIONAL)]
    return ", ".join(codings[:-1]) + " or " + codings[-1]


def decodable(coding: str) -> bool:
    """Whether `decode_body` undoes `coding` (gzip, x-gzip, deflate, br and zstd where their
    decoder is installed; or none)."""
    return not coding or coding in _WBITS or coding in _OPTIONAL


def decode_body(body: bytes, coding: str, limit: int) -> bytes:
    """`body` with `coding` undone, at most `limit` bytes.

    Raises `RequestTooLarge` as soon as the output would pass `limit`, and
    `InvalidContentEncoding` for data that is corrupt, truncated or followed by garbage.
    """
    if not coding or not body:
        return body
    if coding == "br":
        return _unbrotli(body, limit)
    if coding == "zstd":
        return _unzstd(body, limit)
    wbits = _WBITS[coding]
    if coding == "deflate":
        try:
            return _inflate(body, wbits, limit, coding)
        except InvalidContentEncoding:
            # Many clients send raw deflate (RFC 1951) where HTTP means the zlib format.
            return _inflate(body, -zlib.MAX_WBITS, limit, coding)
    return _inflate(body, wbits, limit, coding)


def _inflate(data: bytes, wbits: int, limit: int, coding: str) -> bytes:
    """Inflate `data`, fed in bounded pieces so the work stays linear in its size."""
    out: list[bytes] = []
    size = pos = members = 0
    pending = b""
    inflater = None
    while True:
        if inflater is None:
            members += 1
            if members > _MAX_MEMBERS:
                raise InvalidContentEncoding(
                    f"The request body has more than {_MAX_MEMBERS} {coding} members."
                )
            inflater = zlib.decompressobj(wbits)
        if not pending:
            pending, pos = data[pos : pos + _PIECE], pos + _PIECE
            if not pending:  # all input used and the stream has not ended
                raise _corrupt(coding)
        try:
            chunk = inflater.decompress(pending, limit + 1 - size)
        except zlib.error:
            raise _corrupt(coding) from None
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(
                f"Request body is larger than the {limit}-byte limit once decompressed."
            )
        out.append(chunk)
        if not inflater.eof:
            pending = inflater.unconsumed_tail
            continue
        # The end of a stream: then nothing, zero padding (gzip readers allow it), or, for
        # gzip, another member.
        pending = inflater.unused_data
        if not pending:
            pending, pos = data[pos : pos + _PIECE], pos + _PIECE
        if not pending:
            return b"".join(out)
        if pending[0] == 0:
            if pending.strip(b"\x00") or data[pos:].strip(b"\x00"):
                raise _corrupt(coding)
            return b"".join(out)
        if coding == "deflate":
            raise _corrupt(coding)
        inflater = None


def _unbrotli(data: bytes, limit: int) -> bytes:
    brotli: Any = importlib.import_module("brotli")
    decoder = brotli.Decompressor()
    out: list[bytes] = []
    size = 0
    pending = data
    try:
        while True:
            chunk = decoder.process(pending, output_buffer_limit=limit + 1 - size)
            pending = b""
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            out.append(chunk)
            if decoder.is_finished():
                return b"".join(out)
            if decoder.can_accept_more_data():  # all input used, the stream has not ended
                raise _corrupt("br")
    except brotli.error:
        raise _corrupt("br") from None


def _unzstd(data: bytes, limit: int) -> bytes:
    zstandard: Any = importlib.import_module("zstandard")
    out: list[bytes] = []
    size = 0
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
        while chunk := reader.read(limit + 1 - size):
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            out.append(chunk)
        # The reader ends quietly inside a truncated frame: each frame must be complete.
        rest = data
        while rest:
            frame = zstandard.ZstdDecompressor().decompressobj()
            frame.decompress(rest)
            if not frame.eof:
                raise _corrupt("zstd")
            rest = frame.unused_data
    except zstandard.ZstdError:
        raise _corrupt("zstd") from None
    return b"".join(out)


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"Request body is larger than the {limit}-byte limit once decompressed.")


def _corrupt(coding: str) -> InvalidContentEncoding:
    return InvalidContentEncoding(
        f"The request body is not valid {coding} data (corrupt or truncated)."
    )
