"""Keep query-string values out of the request lines httpx and uvicorn log for the gateway.

A client may carry a key in the query (`?key=` for Gemini, `?api-key=`, signed URLs), and both
libraries log every request's full target at INFO: httpx's `HTTP Request: POST https://…?…`
and uvicorn's access line. The gateway's own lines carry the path only. These filters keep each
parameter's name and replace its value with `***`, so a log still shows what was sent.
"""

from __future__ import annotations

import logging
from typing import Final

import httpx

__all__ = ["mask_query", "redact_httpx_log", "redact_uvicorn_access_log"]

MASK: Final = "***"


def mask_query(query: str) -> str:
    """`a=1&key=s` -> `a=***&key=***`; a part with no `=` is masked whole."""
    parts = []
    for part in query.split("&"):
        name, equals, _ = part.partition("=")
        parts.append(f"{name}={MASK}" if equals else MASK if part else part)
    return "&".join(parts)


class _MaskQueries(logging.Filter):
    """Masks the query of every URL argument (and of a request path, for uvicorn's line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(map(_has_query, record.args)):
            record.args = tuple(_masked(arg) for arg in record.args)
        return True


def _has_query(arg: object) -> bool:
    if isinstance(arg, httpx.URL):
        return bool(arg.query)
    return isinstance(arg, str) and arg.startswith("/") and "?" in arg


def _masked(arg: object) -> object:
    if isinstance(arg, httpx.URL) and arg.query:
        return f"{arg.copy_with(query=None)}?{mask_query(arg.query.decode('ascii'))}"
    if isinstance(arg, str) and arg.startswith("/") and "?" in arg:
        path, _, query = arg.partition("?")
        return f"{path}?{mask_query(query)}"
    return arg


_FILTER: Final = _MaskQueries()


def redact_httpx_log() -> None:
    """Mask query values in httpx's request lines (idempotent; the filter is shared)."""
    logging.getLogger("httpx").addFilter(_FILTER)


def redact_uvicorn_access_log() -> None:
    """Mask query values in uvicorn's access lines (idempotent)."""
    logging.getLogger("uvicorn.access").addFilter(_FILTER)
