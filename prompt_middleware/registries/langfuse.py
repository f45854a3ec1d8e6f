"""Prompts from Langfuse (Cloud or self-hosted) over its public HTTP API.

`LangfuseRegistry` calls `GET {base}/api/public/v2/prompts/{name}` with httpx, the endpoint the
`langfuse` SDK's generated clients wrap, so the SDK is not needed at run time. The SDK's
`get_prompt` blocks the event loop and starts threads; its async client sleeps with asyncio
between retries (broken under trio) and was renamed between SDK majors. Requests here are plain
`httpx.Request`s sent on one shared client, retried with anyio.

Per-request credentials are served by `tenants.LangfuseTenants`, through `with_credentials`.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import math
import os
import random
import re
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from types import TracebackType
from typing import Any

import anyio
import httpx

from ..core._json import load_document
from ..core.errors import (
    InvalidPrompt,
    PromptNotFound,
    RegistryAuthError,
    RegistryUnavailable,
)
from ..core.prompts import Prompt, PromptRef
from ._urls import normalise_base_url

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_MAX_RESPONSE_SIZE", "LangfuseRegistry"]

logger = logging.getLogger("prompt_middleware.langfuse")

DEFAULT_BASE_URL = "https://cloud.langfuse.com"
DEFAULT_MAX_RESPONSE_SIZE = 5 * 2**20
"""Bytes of one Langfuse answer read at most (decompressed); a larger one is `InvalidPrompt`."""
PUBLIC_KEY_ENV = "LANGFUSE_PUBLIC_KEY"
SECRET_KEY_ENV = "LANGFUSE_SECRET_KEY"
BASE_URL_ENV = "LANGFUSE_BASE_URL"
HOST_ENV = "LANGFUSE_HOST"

_PROMPTS_PATH = "/api/public/v2/prompts/"
_USER_AGENT = "prompt-middleware"
_KEEPALIVE = 20
_REQUIRED_FIELDS = ("name", "version", "type", "prompt")
# Letters only: an error class name is shown, anything that could be an echoed key is not.
_ERROR_CLASS = re.compile(r"[A-Z][A-Za-z]{2,63}")
# Failures worth another attempt; anything else (bad URL, protocol misuse) fails at once.
_RETRYABLE_ERRORS = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.ProxyError,
    TimeoutError,
)


class _Redacted:
    """Holds a secret so that neither repr() nor vars() dumps show it."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<redacted>"


class LangfuseRegistry:
    """Fetches prompts from Langfuse by name and version or label.

    Credentials and host are read like the `langfuse` SDK reads them: `public_key` /
    `secret_key` or `LANGFUSE_PUBLIC_KEY` / `LANGFUSE_SECRET_KEY`; the base URL from `base_url`,
    `LANGFUSE_BASE_URL`, `host`, `LANGFUSE_HOST`, else Langfuse Cloud (EU).

    `timeout` bounds each attempt as a whole: httpx enforces it on each phase (a pooled
    connection, connecting, sending, every read), and an attempt still running `timeout` seconds
    after it began is abandoned, though never while httpx's pool is handing it a connection (a
    request cancelled there leaks that connection slot, encode/httpcore#1093), so the bound is
    met once the pool has answered. An answer larger than `max_response_size` bytes
    (decompressed, 5 MB by default) is refused as a malformed prompt while it is read, so a
    hostile registry costs at most that much memory. At most `max_connections` requests are in
    flight on the client at once (the pool size of the client it creates; with a `client` of
    your own, no more than its pool holds). Timeouts, connection errors, 408, 429 and
    5xx are retried up to `max_retries` times with capped exponential backoff and jitter
    (`retry_base_delay * 2**n`, at most `retry_max_delay`); a `Retry-After` header replaces the
    backoff, capped at `retry_max_delay`. 404, 401 and 403 are never retried.

    One `httpx.AsyncClient` is created on first use and closed by `aclose()`; a `client` given
    here is used as is and left open.
    """

    def __init__(
        self,
        public_key: str | None = None,
        secret_key: str | None = None,
        host: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 5.0,
        max_retries: int = 2,
        client: httpx.AsyncClient | None = None,
        retry_base_delay: float = 0.25,
        retry_max_delay: float = 2.0,
        trust_env: bool = True,
        max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE,
        max_connections: int = 100,
    ) -> None:
        public_key = public_key or os.environ.get(PUBLIC_KEY_ENV)
        secret_key = secret_key or os.environ.get(SECRET_KEY_ENV)
        if not public_key or not secret_key:
            missing = [
                f"{arg} (or {env})"
                for arg, env, value in (
                    ("public_key", PUBLIC_KEY_ENV, public_key),
                    ("secret_key", SECRET_KEY_ENV, secret_key),
                )
                if not value
            ]
            raise ValueError(f"LangfuseRegistry needs {' and '.join(missing)}.")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError("timeout must be a positive number of seconds")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError("max_retries must be a non-negative integer")
        if retry_base_delay < 0 or retry_max_delay < 0:
            raise ValueError("retry delays must not be negative")
        if (
            isinstance(max_response_size, bool)
            or not isinstance(max_response_size, int)
            or max_response_size < 1
        ):
            raise ValueError("max_response_size must be a positive integer")
        if (
            isinstance(max_connections, bool)
            or not isinstance(max_connections, int)
            or max_connections < 1
        ):
            raise ValueError("max_connections must be a positive integer")

        self._base_url = normalise_base_url(
            base_url
            or os.environ.get(BASE_URL_ENV)
            or host
            or os.environ.get(HOST_ENV)
            or DEFAULT_BASE_URL
        )
        self._public_key = public_key
        self._authorization = _Redacted(_basic_auth(public_key, secret_key))
        self._timeout = float(timeout)
        self._max_retries = max_retries
        self._retry_base_delay = retry_base_delay
        self._retry_max_delay = retry_max_delay
        self._trust_env = trust_env
        self._max_response_size = max_response_size
        self._max_connections = max_connections
        self._client = client
        self._own_client: httpx.AsyncClient | None = None
        self._slots: anyio.Semaphore | None = None
        # Set on registries made by `with_credentials`: they use this one's client.
        self._parent: LangfuseRegistry | None = None

    @property
    def base_url(self) -> str:
        """The Langfuse base URL requests go to, normalised (no trailing slash)."""
        return self._base_url

    def __repr__(self) -> str:
        key = _abbrev(self._public_key)
        return f"{type(self).__name__}(base_url={self._base_url!r}, public_key={key!r})"

    async def __aenter__(self) -> LangfuseRegistry:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client this registry created (a later fetch creates a new one)."""
        client, self._own_client = self._own_client, None
        if client is not None:
            await client.aclose()

    async def get_prompt(
        self, name: str, *, version: int | None = None, label: str | None = None
    ) -> Prompt:
        ref = PromptRef.checked(name, version, label)
        request = self._build_request(ref)
        response = await self._send(request, ref)
        status = response.status_code
        if 200 <= status < 300:
            return _prompt_from_response_data(_document(response, ref), ref)
        if status == 404:
            raise PromptNotFound(f"Prompt {ref} not found in Langfuse.", param="prompt_id")
        if status in (401, 403):
            raise RegistryAuthError(
                f"Langfuse at {self._base_url} rejected the API keys ({_describe(response)})."
            )
        raise RegistryUnavailable(
            f"Langfuse at {self._base_url} answered {_describe(response)} for prompt {ref}."
        )

    def _build_request(self, ref: PromptRef) -> httpx.Request:
        params: dict[str, str] = {}
        if ref.version is not None:
            params["version"] = str(ref.version)
        elif ref.label is not None:
            params["label"] = ref.label
        # Neither: no query at all, and Langfuse serves the `production` label.
        return httpx.Request(
            "GET",
            self._base_url + _PROMPTS_PATH + urllib.parse.quote(ref.name, safe=""),
            params=params,
            headers={
                "accept": "application/json",
                "authorization": self._authorization.value,
                "user-agent": _USER_AGENT,
            },
            # A hand-built Request carries no timeouts unless told (client defaults apply
            # only in build_request), and building it ourselves keeps any cookie jar out.
            extensions={"timeout": httpx.Timeout(self._timeout).as_dict()},
        )

    async def _send(self, request: httpx.Request, ref: PromptRef) -> _Answer:
        client = self._http()
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                response = await self._attempt(client, request)
            except _TooLarge:
                raise InvalidPrompt(
                    f"Langfuse answered {ref} with more than {self._max_response_size} bytes."
                ) from None
            except _RETRYABLE_ERRORS as exc:
                failure = type(exc).__name__
            except httpx.HTTPError as exc:
                raise self._unavailable(ref, type(exc).__name__, attempt) from exc
            else:
                if not _retryable(response.status_code):
                    return response
                failure = _describe(response)
                retry_after = _retry_after(response.headers)
            if attempt >= self._max_retries:
                raise self._unavailable(ref, failure, attempt)
            delay = self._backoff(attempt, retry_after)
            attempt += 1
            logger.warning(
                "Langfuse %s for prompt %s; retry %d of %d in %.2fs",
                failure,
                ref,
                attempt,
                self._max_retries,
                delay,
            )
            await anyio.sleep(delay)

    async def send_once(self, request: httpx.Request) -> _Answer:
        """One attempt at `request` on this registry's client, bounded as prompt fetches are
        (`timeout`, `max_response_size`, the client's connection slots): for other Langfuse
        API calls sharing the client, e.g. coherence's. Raises `httpx.HTTPError` or
        `TimeoutError`; the answer has `status_code`, `headers` and `json()`."""
        return await self._attempt(self._http(), request)

    async def _attempt(self, client: httpx.AsyncClient, request: httpx.Request) -> _Answer:
        """One request and its whole answer, read within `max_response_size` and `timeout`."""
        with anyio.fail_after(self._timeout):
            # httpx's pool must never queue: a request cancelled, or timed out by httpcore
            # itself, just as the pool hands it a new connection leaves that slot "connecting"
            # forever (encode/httpcore#1093, #830), and a burst of slow answers used them all
            # up. Requests wait here instead, where giving up is clean.
            admission = self._admission()
            await admission.acquire()
            try:
                # Shielded until the connection itself reports progress (the first trace
                # event): cancelled there, it cleans up; a deadline passed meanwhile applies.
                # Other transports (a test's MockTransport, ASGITransport) have no pool to
                # leak and send no trace events: not shielded.
                with anyio.CancelScope(shield=_pooled(client)) as handoff:
                    request.extensions["trace"] = _unshield_on_first_event(handoff)
                    response = await client.send(
                        request, auth=None, follow_redirects=False, stream=True
                    )
                try:
                    body = await self._read_capped(response)
                finally:
                    with anyio.CancelScope(shield=True):
                        await response.aclose()
            finally:
                admission.release()
        return _Answer(response.status_code, response.headers, body)

    async def _read_capped(self, response: httpx.Response) -> bytes:
        """The body, decompressed; `_TooLarge` past `max_response_size` without keeping more."""
        limit = self._max_response_size
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _TooLarge
        chunks: list[bytes] = []
        size = 0
        # Read to the end even past the limit (dropping what comes): httpx's generators left
        # unfinished are only closed by the garbage collector, with a ResourceWarning on trio.
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
        if size > limit:
            raise _TooLarge
        return b"".join(chunks)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self._retry_max_delay)
        delay = min(self._retry_max_delay, self._retry_base_delay * 2.0**attempt)
        return delay * random.uniform(0.5, 1.0)

    def _unavailable(self, ref: PromptRef, failure: str, retries: int) -> RegistryUnavailable:
        tries = f" after {retries + 1} attempts" if retries else ""
        return RegistryUnavailable(
            f"Langfuse at {self._base_url} is unavailable ({failure}{tries}) fetching prompt {ref}."
        )

    def _admission(self) -> anyio.Semaphore:
        """Requests in flight on the shared client, at most as many as its pool holds."""
        if self._parent is not None:
            return self._parent._admission()
        if self._slots is None:
            self._slots = anyio.Semaphore(self._max_connections)
        return self._slots

    def _http(self) -> httpx.AsyncClient:
        if self._parent is not None:
            return self._parent._http()
        if self._client is not None:
            return self._client
        if self._own_client is None or self._own_client.is_closed:
            self._own_client = httpx.AsyncClient(
                timeout=httpx.Timeout(self._timeout),
                limits=httpx.Limits(
                    max_connections=self._max_connections,
                    max_keepalive_connections=min(_KEEPALIVE, self._max_connections),
                ),
                follow_redirects=False,
                trust_env=self._trust_env,
                cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            )
        return self._own_client

    def with_credentials(
        self, public_key: str, secret_key: str, base_url: str | None = None
    ) -> LangfuseRegistry:
        """A registry using other API keys (and base URL), sharing this one's HTTP client.

        Closing it closes nothing; the client belongs to this registry.
        """
        child = LangfuseRegistry(
            public_key,
            secret_key,
            base_url=base_url or self._base_url,
            timeout=self._timeout,
            max_retries=self._max_retries,
            retry_base_delay=self._retry_base_delay,
            retry_max_delay=self._retry_max_delay,
            max_response_size=self._max_response_size,
            max_connections=self._max_connections,
        )
        child._parent = self
        return child

    # -- exporting (`prompt-middleware pull`) ------------------------------------------------

    async def list_prompts(
        self, *, name: str | None = None, label: str | None = None, page_size: int = 100
    ) -> AsyncIterator[dict[str, Any]]:
        """Every prompt's list entry (`name`, `versions`, `labels`, ...), page after page, from
        `GET /api/public/v2/prompts`; `name` / `label` filter as Langfuse does (with a label,
        `versions` lists only the versions carrying it)."""
        what = PromptRef("(list)")
        page = 1
        while True:
            params = {"page": str(page), "limit": str(page_size)}
            if name is not None:
                params["name"] = name
            if label is not None:
                params["label"] = label
            request = self._request(self._base_url + _PROMPTS_PATH.rstrip("/"), params)
            body = self._json(await self._send(request, what), what)
            data, meta = body.get("data"), body.get("meta")
            if not isinstance(data, list) or not isinstance(meta, dict):
                raise InvalidPrompt("Langfuse answered the prompt list without data and meta.")
            for entry in data:
                if not isinstance(entry, dict):
                    raise InvalidPrompt("Langfuse listed a prompt that is not an object.")
                yield entry
            total = meta.get("totalPages")
            if not data or not isinstance(total, int) or page >= total:
                return
            page += 1

    async def get_prompt_data(self, name: str, version: int) -> dict[str, Any]:
        """One version of a prompt as Langfuse serves it (the JSON object, every field)."""
        ref = PromptRef(name, version)
        request = self._build_request(ref)
        data = self._json(await self._send(request, ref), ref)
        _prompt_from_response_data(data, ref)  # refuses what get_prompt would refuse
        return data

    def _request(self, url: str, params: dict[str, str]) -> httpx.Request:
        return httpx.Request(
            "GET",
            url,
            params=params,
            headers={
                "accept": "application/json",
                "authorization": self._authorization.value,
                "user-agent": _USER_AGENT,
            },
            extensions={"timeout": httpx.Timeout(self._timeout).as_dict()},
        )

    def _json(self, response: _Answer, ref: PromptRef) -> dict[str, Any]:
        status = response.status_code
        if status == 404:
            raise PromptNotFound(f"Prompt {ref} not found in Langfuse.", param="prompt_id")
        if status in (401, 403):
            raise RegistryAuthError(
                f"Langfuse at {self._base_url} rejected the API keys ({_describe(response)})."
            )
        if not 200 <= status < 300:
            raise RegistryUnavailable(
                f"Langfuse at {self._base_url} answered {_describe(response)} for {ref}."
            )
        return _document(response, ref)


def _prompt_from_response_data(data: dict[str, Any], ref: PromptRef) -> Prompt:
    missing = [field for field in _REQUIRED_FIELDS if field not in data]
    if missing:
        raise InvalidPrompt(f"Langfuse answered prompt {ref} without {', '.join(missing)}.")
    return Prompt.from_langfuse(data)


def _document(response: _Answer, ref: PromptRef) -> dict[str, Any]:
    """The answer's JSON object; `InvalidPrompt` for anything else, blaming Langfuse."""
    try:
        data: Any = load_document(response.body)
    except ValueError as exc:
        raise InvalidPrompt(
            f"Langfuse answered {ref} with a body that is not JSON ({exc})"
        ) from None
    if not isinstance(data, dict):
        raise InvalidPrompt(f"Langfuse answered {ref} with JSON that is not an object.")
    return data


@dataclass(frozen=True, slots=True)
class _Answer:
    """A Langfuse answer, read in full."""

    status_code: int
    headers: httpx.Headers
    body: bytes

    def json(self) -> Any:
        return load_document(self.body)


class _TooLarge(httpx.HTTPError):
    """An answer past `max_response_size` (an httpx error, so `send_once` callers catch it)."""

    def __init__(self) -> None:
        super().__init__("the answer is larger than max_response_size")


def _pooled(client: httpx.AsyncClient) -> bool:
    """Whether `client` sends through httpx's own connection pool (httpcore)."""
    return isinstance(getattr(client, "_transport", None), httpx.AsyncHTTPTransport)


def _unshield_on_first_event(
    scope: anyio.CancelScope,
) -> Callable[[str, dict[str, Any]], Awaitable[None]]:
    async def trace(event: str, info: dict[str, Any]) -> None:
        scope.shield = False

    return trace


def _retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


def _describe(response: _Answer) -> str:
    """`HTTP 503` plus Langfuse's error class when the body names one (never its message)."""
    text = f"HTTP {response.status_code}"
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return text
    if isinstance(error, str) and _ERROR_CLASS.fullmatch(error):
        text += f" {error}"
    return text


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _basic_auth(public_key: str, secret_key: str) -> str:
    return "Basic " + base64.b64encode(f"{public_key}:{secret_key}".encode()).decode("ascii")


def _abbrev(key: str) -> str:
    return key if len(key) <= 10 else key[:10] + "..."
