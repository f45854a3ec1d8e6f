"""The access log: one line per guarded request on the `prompt_middleware.access` logger (under
the gateway, one per HTTP request it answers: `Observer.request`).

Each record carries its fields in `record.access` (method, path, status, duration_ms, prompt,
version, label, cache, upstream_ms, outcome): never a body, a query string or a header value.
`JsonFormatter` writes any record as one JSON object, with those fields at the top level.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, Literal

__all__ = ["ACCESS_LOGGER", "JsonFormatter", "configure_logging", "log_access"]

ACCESS_LOGGER = logging.getLogger("prompt_middleware.access")


def log_access(fields: Mapping[str, Any]) -> None:
    """Write one access line; `fields` as described in the module docstring."""
    if not ACCESS_LOGGER.isEnabledFor(logging.INFO):
        return
    prompt = fields.get("prompt")
    text = f"{fields['method']} {fields['path']} {fields['status']} {fields['duration_ms']}ms"
    if prompt is not None:
        text += f" prompt={prompt} version={fields.get('version')} label={fields.get('label')}"
    text += f" cache={fields.get('cache') or '-'} outcome={fields.get('outcome')}"
    upstream = fields.get("upstream_ms")
    if upstream is not None:
        text += f" upstream={upstream}ms"
    # The record is made here rather than by `ACCESS_LOGGER.info`, which looks for the
    # caller's file and line by walking the stack: an access line has no use for them.
    record = ACCESS_LOGGER.makeRecord(
        ACCESS_LOGGER.name,
        logging.INFO,
        __file__,
        0,
        text,
        (),
        None,
        extra={"access": dict(fields)},
    )
    ACCESS_LOGGER.handle(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, the access
    fields when the record has them, and the exception text when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if isinstance(access, Mapping):
            out.update(access)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure_logging(level: str = "info", log_format: Literal["text", "json"] = "text") -> None:
    """Root logging for the gateway: text lines, or one JSON object per line (`--log-format`)."""
    # Neither format shows the process, thread or multiprocessing name that every record looks
    # up (the process id with a system call, per line).
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
