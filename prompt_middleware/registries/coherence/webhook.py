"""Langfuse prompt webhooks: signature checks and the ASGI app that receives them.

Langfuse signs each delivery with `x-langfuse-signature: t=<unix seconds>,v1=<hex>`, the hex
HMAC-SHA256 of `f"{t}."` followed by the raw body, keyed with the whole secret string as shown in
Langfuse (`lf-whsec_…`, UTF-8, not base64-decoded). This is not the Standard Webhooks scheme.

Langfuse retries a failed delivery 4 times with the same signature and disables the automation
after 5 failed executions in a row, so every authentic delivery is answered 2xx at once: event
types we do not act on, unknown prompts and repeated deliveries (deduplicated by the payload's
`id`) included.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from cachetools import LRUCache
from starlette.types import Receive, Scope, Send

from ..._asgi import answer_lifespan, send_json
from ...core.errors import error_body

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_TOLERANCE",
    "SIGNATURE_HEADER",
    "PromptChange",
    "WebhookApp",
    "WebhookStats",
    "parse_prompt_change",
    "sign",
    "verify_signature",
]

logger = logging.getLogger("prompt_middleware.coherence.webhook")

SIGNATURE_HEADER = "x-langfuse-signature"
DEFAULT_TOLERANCE = 300.0
"""Seconds a signature's timestamp may be off our clock (either way) before it is refused."""
DEFAULT_MAX_BODY_SIZE = 2**20
PROMPT_VERSION = "prompt-version"
_MAX_SIGNATURE_HEADER = 4096
_REFUSAL_WARNING_INTERVAL = 60.0  # seconds: anyone can send unsigned requests, many of them
_TOO_LARGE = b"\x00too large"  # compared by identity only


def sign(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The `x-langfuse-signature` value Langfuse sends for `body` (for tests and tools)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_digest(secret, t, body)}"


def verify_signature(
    header: str | None,
    body: bytes,
    secrets: Sequence[str],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """Whether `header` signs `body` with one of `secrets`, at a time within `tolerance`.

    Several `v1=` entries are allowed (any may match), as are several secrets (rotation).
    Digests are compared in constant time.
    """
    if not header or len(header) > _MAX_SIGNATURE_HEADER:
        return False
    timestamp: int | None = None
    candidates: list[bytes] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit():
                return False
            timestamp = int(value)
        elif key == "v1" and value.isascii():
            candidates.append(value.lower().encode("ascii"))
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if not abs(current - timestamp) <= tolerance:
        return False
    matched = False
    for secret in secrets:
        expected = _digest(secret, timestamp, body).encode("ascii")
        for candidate in candidates:
            # No early exit: every comparison runs, each in constant time.
            matched |= hmac.compare_digest(expected, candidate)
    return matched


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii"), hashlib.sha256)
    mac.update(body)
    return mac.hexdigest()


@dataclass(frozen=True, slots=True)
class PromptChange:
    """What a `prompt-version` delivery tells us: which project and prompt changed, and how.

    The delivery's prompt body is deliberately not kept: prompts may reference other prompts,
    which Langfuse resolves when serving, so the cache refetches instead of trusting it.
    """

    delivery_id: str
    project_id: str
    name: str
    version: int | None
    action: str


class MalformedPayload(ValueError):
    """An authentic delivery whose JSON is not the shape Langfuse documents."""


def parse_prompt_change(payload: Any) -> PromptChange | str:
    """A `PromptChange` for a `prompt-version` event, else the event's type (ignored).

    Raises `MalformedPayload` when the payload is not a Langfuse webhook object.
    """
    if not isinstance(payload, dict):
        raise MalformedPayload("the payload is not a JSON object")
    delivery_id, kind = payload.get("id"), payload.get("type")
    if not isinstance(delivery_id, str) or not delivery_id:
        raise MalformedPayload("the payload has no string 'id'")
    if not isinstance(kind, str):
        raise MalformedPayload("the payload has no string 'type'")
    if kind != PROMPT_VERSION:
        return kind
    prompt = payload.get("prompt")
    if not isinstance(prompt, dict):
        raise MalformedPayload("a prompt-version payload needs a 'prompt' object")
    project_id, name = prompt.get("projectId"), prompt.get("name")
    if not isinstance(project_id, str) or not project_id:
        raise MalformedPayload("the prompt has no string 'projectId'")
    if not isinstance(name, str) or not name:
        raise MalformedPayload("the prompt has no string 'name'")
    version = prompt.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        version = None
    action = payload.get("action")
    return PromptChange(
        delivery_id, project_id, name, version, action if isinstance(action, str) else ""
    )


@dataclass(frozen=True, slots=True)
class WebhookStats:
    """Deliveries seen by a `WebhookApp`, by outcome.

    Attributes:
        accepted: authentic `prompt-version` deliveries acted on (an invalidation).
        ignored: authentic deliveries of other event types, answered 2xx and otherwise ignored.
        duplicate: authentic deliveries whose `id` was seen before; nothing done twice.
        rejected: missing, wrong or stale signatures (401).
        malformed: authentic but unreadable payloads (400), and bodies over the size limit (413).
    """

    accepted: int = 0
    ignored: int = 0
    duplicate: int = 0
    rejected: int = 0
    malformed: int = 0


OnChange = Callable[[PromptChange], Awaitable["bool | None"]]


class WebhookApp:
    """An ASGI app that receives Langfuse webhooks (`POST`, any path: mount it where you like).

    Each answer is counted in `stats`; the gateway also counts them as metrics
    (`prompt_middleware.gateway.observing.count_webhooks`).

    Args:
        secrets: the automation's signing secrets; several while one is being rotated.
        on_change: awaited for each authentic `prompt-version` delivery whose `id` this app
            has not seen; it must be quick (it runs before the answer). It returns False when
            another process already took the delivery (e.g. a shared Redis claim): then it is
            answered as a duplicate. Errors in it are logged and still answered 2xx, as a retry
            would fail the same way.
        tolerance: seconds the signature's timestamp may differ from our clock.
        max_body_size: larger bodies are refused with 413 before being read in full.
        dedupe_size: delivery ids remembered to recognise repeats (least recent forgotten).
    """

    def __init__(
        self,
        secrets: Iterable[str],
        on_change: OnChange,
        *,
        tolerance: float = DEFAULT_TOLERANCE,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        dedupe_size: int = 4096,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secrets = tuple(secrets)
        if not self._secrets or not all(isinstance(s, str) and s for s in self._secrets):
            raise ValueError("WebhookApp needs at least one non-empty secret")
        if not (tolerance >= 0 and math.isfinite(tolerance)):
            raise ValueError("tolerance must be a non-negative number of seconds")
        if max_body_size < 1 or dedupe_size < 1:
            raise ValueError("max_body_size and dedupe_size must be positive")
        self._on_change = on_change
        self._tolerance = tolerance
        self._max_body_size = max_body_size
        self._seen: LRUCache[str, None] = LRUCache(dedupe_size)
        self._clock = clock
        self._counts = dict.fromkeys(WebhookStats.__slots__, 0)
        self._refusals_unlogged = 0
        self._refusal_logged_at = -math.inf

    def __repr__(self) -> str:  # the secrets stay out
        return f"{type(self).__name__}(secrets=<{len(self._secrets)} redacted>)"

    @property
    def stats(self) -> WebhookStats:
        return WebhookStats(**self._counts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # a websocket: closing without accepting refuses it
        if scope["method"] != "POST":
            await _answer(send, 405, "Webhooks are delivered with POST.", "method_not_allowed")
            return
        header = None
        for name, value in scope["headers"]:
            if name.lower() == b"content-length" and _over(value, self._max_body_size):
                await self._too_large(send)
                return
            if name.lower() == SIGNATURE_HEADER.encode():
                header = value.decode("latin-1")
        body = await self._read(receive)
        if body is None:  # the client left
            return
        if body is _TOO_LARGE:
            await self._too_large(send)
            return
        if not verify_signature(
            header, body, self._secrets, tolerance=self._tolerance, now=self._clock()
        ):
            self._counts["rejected"] += 1
            self._log_refusal()
            await _answer(send, 401, "Invalid webhook signature.", "invalid_webhook_signature")
            return
        await self._handle(body, send)

    def _log_refusal(self) -> None:
        """A warning at most once a minute, so a flood of forged deliveries cannot flood logs."""
        now = time.monotonic()
        if now - self._refusal_logged_at < _REFUSAL_WARNING_INTERVAL:
            self._refusals_unlogged += 1
            logger.debug("Refused a webhook delivery: missing, wrong or stale signature")
            return
        since = self._refusals_unlogged
        self._refusal_logged_at, self._refusals_unlogged = now, 0
        logger.warning(
            "Refused a webhook delivery: missing, wrong or stale signature%s",
            f" ({since} more refused since the last warning)" if since else "",
        )

    async def _handle(self, body: bytes, send: Send) -> None:
        try:
            change = parse_prompt_change(orjson.loads(body))
        except (orjson.JSONDecodeError, MalformedPayload) as exc:
            self._counts["malformed"] += 1
            reason = str(exc) if isinstance(exc, MalformedPayload) else "the body is not JSON"
            logger.warning("Refused a signed webhook delivery: %s", reason)
            await _answer(send, 400, f"Malformed webhook payload: {reason}.", "invalid_webhook")
            return
        if isinstance(change, str):
            self._counts["ignored"] += 1
            logger.debug("Ignored a webhook delivery of type %r", change[:100])
            await send_json(send, 200, {"status": "ignored"})
            return
        acted: bool | None = False
        if change.delivery_id not in self._seen:
            self._seen[change.delivery_id] = None
            try:
                acted = await self._on_change(change)
            except Exception:  # a retry would fail the same way: answered 2xx all the same
                logger.exception("Handling a webhook delivery failed")
                acted = True
        if acted is False:
            self._counts["duplicate"] += 1
            logger.debug("Ignored a repeated webhook delivery")
            await send_json(send, 200, {"status": "duplicate"})
            return
        self._counts["accepted"] += 1
        await send_json(send, 200, {"status": "accepted"})

    async def _read(self, receive: Receive) -> bytes | None:
        """The body; None if the client left; `_TOO_LARGE` past `max_body_size`."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body_size:
                return _TOO_LARGE
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, send: Send) -> None:
        self._counts["malformed"] += 1
        limit = self._max_body_size
        message = f"Webhook body is larger than the {limit}-byte limit."
        await _answer(send, 413, message, "request_too_large")


async def _answer(send: Send, status: int, message: str, code: str) -> None:
    await send_json(send, status, error_body(message, "invalid_request_error", None, code))


def _over(length: bytes, limit: int) -> bool:
    return length.isdigit() and (len(length) > 18 or int(length) > limit)
