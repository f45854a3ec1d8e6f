"""PromptMiddleware: the pure-ASGI layer that turns prompt references into messages."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from functools import lru_cache, partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import observability
from ._asgi import pushed_back, read_body, replay, send_error
from .core.encoding import content_coding, decodable, decodable_in_words, decode_body
from .core.errors import (
    MethodNotAllowed,
    PromptMiddlewareError,
    PromptNotFound,
    RequestTooLarge,
    UnsupportedContentEncoding,
)
from .core.experiments import Experiment, choose_label, parse_experiments, sticky_key
from .core.prompts import Prompt, PromptRef
from .core.references import ModelPrompt, PromptRequest, find_prompt_request, reference_markers
from .core.rewrite import ClientMessages, RewriteOptions, build_chat_body, build_responses_body
from .registries.base import PromptRegistry, ensure_prompt
from .registries.cache import CachedRegistry

if TYPE_CHECKING:
    from .registries.tenants import LangfuseTenants

__all__ = ["PromptMiddleware"]

logger = logging.getLogger("prompt_middleware")

CHAT_SUFFIX = "/chat/completions"
RESPONSES_SUFFIX = "/responses"
DEFAULT_SUFFIXES = (CHAT_SUFFIX, RESPONSES_SUFFIX)
DEFAULT_BODY_TIMEOUT = 30.0
"""Seconds a guarded request's body may take to arrive in all before a 408."""
_BODY_HEADERS = (b"content-length", b"transfer-encoding", b"content-encoding")
# Most header names have none of these lengths: they need no lower-casing to be told apart.
_BODY_HEADER_LENGTHS = frozenset(len(name) for name in _BODY_HEADERS)
# x-prompt-name: longer names are cut (HTTP clients cap header sizes, h11 at 16 KiB in all).
_MAX_NAME_HEADER = 1024
_NAME_SAFE = "/-_.~:@"
_ELLIPSIS = "%E2%80%A6"
_ALLOW_POST = ((b"allow", b"POST"),)


class PromptMiddleware:
    """Rewrites OpenAI-style requests that reference a managed prompt; passes the rest on.

    See the README for every option. `registry` is wrapped in a `CachedRegistry` unless
    `cache_ttl` is 0 or it already is one.
    """

    def __init__(
        self,
        app: ASGIApp,
        registry: PromptRegistry,
        *,
        cache_ttl: float = 60.0,
        paths: Iterable[str] | None = None,
        max_body_size: int = 10 * 2**20,
        strict_variables: bool = False,
        client_messages: ClientMessages = "replace",
        text_role: str = "user",
        model_prompts: Mapping[str, ModelPrompt | Mapping[str, Any]] | None = None,
        allow_request_credentials: bool = False,
        allowed_langfuse_hosts: Collection[str] | None = None,
        authorize: Callable[[Scope], Awaitable[object]] | None = None,
        experiments: Mapping[str, Experiment | Mapping[str, Any]] | None = None,
        body_timeout: float | None = DEFAULT_BODY_TIMEOUT,
    ) -> None:
        if client_messages not in ("replace", "append"):
            raise ValueError("client_messages must be 'replace' or 'append'")
        if max_body_size <= 0:
            raise ValueError("max_body_size must be positive")
        if body_timeout is not None and not (body_timeout > 0 and math.isfinite(body_timeout)):
            raise ValueError("body_timeout must be a positive number of seconds or None")
        self.app = app
        if cache_ttl > 0 and not isinstance(registry, CachedRegistry):
            registry = CachedRegistry(registry, ttl=cache_ttl)
        self.registry = registry
        self._cache = registry if isinstance(registry, CachedRegistry) else None
        self._paths = frozenset(paths) if paths is not None else None
        self.max_body_size = max_body_size
        self.body_timeout = body_timeout
        self.options = RewriteOptions(strict_variables, client_messages, text_role)
        self._model_prompts: Mapping[str, ModelPrompt] = MappingProxyType(
            {
                alias: ModelPrompt.coerce(alias, value)
                for alias, value in (model_prompts or {}).items()
            }
        )
        self._markers = reference_markers(self._model_prompts)
        # The first finds a plainly written prompt field, as nearly every prompt request has:
        # asked alone, a rewrite pays no generator for the pre-filter.
        self._first_marker = self._markers[0]
        self._other_markers = self._markers[1:]
        self.allow_request_credentials = allow_request_credentials
        self._tenants = (
            _tenant_pool(registry, allowed_langfuse_hosts) if allow_request_credentials else None
        )
        self.authorize = authorize
        self.experiments = parse_experiments(experiments)

    @property
    def model_prompts(self) -> Mapping[str, ModelPrompt]:
        """The model aliases bound to prompts; read-only (the byte pre-filter is built on them)."""
        return self._model_prompts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            method = scope["method"]
            if method == "POST":
                if self._matches(scope):
                    if self.authorize is None or await _authorized(self.authorize, scope, send):
                        if observability.active is None:
                            await self._handle(scope, receive, send)
                        else:
                            await observability.active.guard(self._handle, scope, receive, send)
                    return
            elif not method.isupper() and self._matches(scope):
                # `post` is not POST, but the HTTP client behind may send it as POST: refused,
                # never passed on unexamined (h11 hands the method on as the client spelled it).
                error = MethodNotAllowed(
                    f"Method {method!r} is not allowed here; HTTP methods are"
                    " case-sensitive (send POST)."
                )
                await send_error(send, error, _ALLOW_POST)
                return
        elif kind == "lifespan":
            await self._pass_lifespan(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _matches(self, scope: Scope) -> bool:
        path: str = scope["path"]
        if self._paths is None:
            return path.endswith(DEFAULT_SUFFIXES) or (
                _loose(path) and _canonical_path(path).endswith(DEFAULT_SUFFIXES)
            )
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        return path in self._paths or (_loose(path) and _canonical_path(path) in self._paths)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_body_size
        kept, codings, too_large = _scan_headers(scope["headers"], limit)
        coding = content_coding(codings) if codings else ""
        try:
            if coding and not decodable(coding):  # it would go on unexamined, keys and all
                raise UnsupportedContentEncoding(
                    f"Content-Encoding {coding!r} is not supported here: send the body"
                    f" uncompressed, or compressed with {decodable_in_words()}."
                )
            if too_large:  # refused before reading, so the client gets no 100 Continue
                raise _too_large(limit)
            # Most bodies come in one message: read here, without a coroutine for it.
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body = message.get("body", b"")
                if len(body) > limit:
                    raise _too_large(limit)
            else:
                body = await read_body(pushed_back(message, receive), limit, self.body_timeout)
                if body is None:  # the client left before the body was complete
                    return
            # gzip / deflate: inspected decompressed, within max_body_size (no bombs).
            decoded = decode_body(body, coding, limit) if coding else body
        except PromptMiddlewareError as exc:
            observability.record_error(exc)
            await send_error(send, exc)
            return

        rewritten: tuple[bytes, Prompt, str | None] | None = None
        if self._first_marker.search(decoded) is not None or any(
            marker.search(decoded) for marker in self._other_markers
        ):  # else it has no reference
            try:
                # A fresh cache entry needs no await: then the whole rewrite is one plain call.
                now = self._rewrite_now(decoded, scope)
                rewritten = (
                    await self._rewrite_fetched(now, scope) if isinstance(now, _Pending) else now
                )
            except PromptMiddlewareError as exc:
                observability.record_error(exc)
                await send_error(send, exc)
                return
            except Exception as exc:
                logger.exception("unexpected error while resolving a prompt")
                observability.record_error(exc)
                await send_error(
                    send, PromptMiddlewareError("Internal error resolving the prompt.")
                )
                return

        if rewritten is None:  # the original bytes and headers, compressed or not
            await self.app(scope, replay(body, receive), send)
            return
        new_body, prompt, label = rewritten
        kept.append((b"content-length", str(len(new_body)).encode("ascii")))
        inner_scope = dict(scope)
        inner_scope["headers"] = kept
        state = scope.get("state")
        inner_scope["state"] = state = {} if state is None else state
        state["prompt"] = prompt
        state["prompt_label"] = label
        send = _with_prompt_headers(send, prompt, label)
        await self.app(inner_scope, replay(new_body, receive), send)

    def _rewrite_now(
        self, body: bytes, scope: Scope
    ) -> tuple[bytes, Prompt, str | None] | _Pending | None:
        """The body to forward, the prompt, and the label that chose it (None: by version); or
        `_Pending` when the prompt is not in the cache fresh (`_rewrite_fetched` goes on)."""
        found = find_prompt_request(
            body, self._model_prompts, allow_credentials=self.allow_request_credentials
        )
        if found is None:
            return None
        data, request = found
        chosen = None
        if self.experiments and request.ref.version is None and request.ref.label is None:
            request, chosen = self._experiment(request, data, scope)
        asked = request.ref
        cache = self._cache
        if cache is None or request.credentials is not None:
            return _Pending(data, request, chosen)
        prompt = cache.fresh_prompt(asked.name, version=asked.version, label=asked.label)
        if prompt is None:
            return _Pending(data, request, chosen)
        build = build_responses_body if _is_responses(scope["path"]) else build_chat_body
        return build(data, request, prompt, self.options), prompt, asked.effective_label

    async def _rewrite_fetched(
        self, pending: _Pending, scope: Scope
    ) -> tuple[bytes, Prompt, str | None]:
        """`_rewrite_now`'s answer, the prompt asked of the registry that serves the request
        (its tenant's, if it sent keys)."""
        data, request, chosen = pending
        asked = request.ref
        try:
            registry = self.registry
            if request.credentials is not None and self._tenants is not None:
                registry = self._tenants.registry_for(request.credentials)
            prompt = await registry.get_prompt(asked.name, version=asked.version, label=asked.label)
            if self._cache is None:
                prompt = ensure_prompt(prompt, asked)
        except PromptNotFound as exc:
            if chosen is None:
                raise
            raise PromptNotFound(
                f"Prompt {asked} not found: experiment {asked.name!r} chose label"
                f" {chosen!r}, which no version of the prompt has.",
                param="prompt_id",
            ) from exc
        build = build_responses_body if _is_responses(scope["path"]) else build_chat_body
        return build(data, request, prompt, self.options), prompt, asked.effective_label

    def _experiment(
        self, request: PromptRequest, data: Mapping[str, Any], scope: Scope
    ) -> tuple[PromptRequest, str | None]:
        """`request` with the label its prompt's experiment chooses, and that label (None and
        `request` unchanged when no experiment covers the prompt)."""
        name = request.ref.name
        experiment = self.experiments.get(name)
        if experiment is None:
            return request, None
        key = sticky_key(experiment, data, scope["headers"])
        label = choose_label(name, self.experiments, key)
        return request._replace(ref=PromptRef(name, label=label)), label

    async def _pass_lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass lifespan through; meanwhile own a task group for the cache's refreshes."""
        if self._cache is None:
            await self.app(scope, receive, self._closing_send(send))
            return
        error: Exception | None = None
        async with anyio.create_task_group() as task_group:
            self._cache.set_task_group(task_group)
            watch = getattr(self._cache.registry, "watch", None)
            if watch is not None:  # e.g. FileRegistry(watch=True): drop what changes, at once
                task_group.start_soon(watch, partial(self._cache.invalidate, origin="watch"))
            try:
                await self.app(scope, receive, self._closing_send(send))
            except Exception as exc:
                # Re-raised below, so the server sees the app's own exception rather than a
                # task-group ExceptionGroup wrapping it.
                error = exc
            finally:
                self._cache.set_task_group(None)
                task_group.cancel_scope.cancel()
        if error is not None:
            raise error

    def _closing_send(self, send: Send) -> Send:
        async def send_and_close(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.aclose()
            await send(message)

        return send_and_close

    async def aclose(self) -> None:
        """Release what the middleware owns: the cache's background work, registry clients."""
        if self._tenants is not None:
            await self._tenants.aclose()
        closer = getattr(self.registry, "aclose", None)
        if closer is not None:
            await closer()


class _Pending(NamedTuple):
    """A prompt request whose prompt must be asked of a registry (an await)."""

    data: dict[str, Any]
    request: PromptRequest
    chosen: str | None  # the label an experiment chose, if one did


async def _authorized(
    authorize: Callable[[Scope], Awaitable[object]], scope: Scope, send: Send
) -> bool:
    """Run `authorize` before anything is read; it refuses by raising PromptMiddlewareError."""
    try:
        await authorize(scope)
    except PromptMiddlewareError as exc:
        await send_error(send, exc)
        return False
    except Exception:
        logger.exception("unexpected error in authorize")
        await send_error(send, PromptMiddlewareError("Internal error checking the request."))
        return False
    return True


def _with_prompt_headers(send: Send, prompt: Prompt, label: str | None) -> Send:
    extra = _prompt_headers(prompt.name, prompt.version, prompt.source, label)

    # A plain function handing back `send`'s own awaitable, not a coroutine of its own: no
    # frame per message, which counts on a stream's every event.
    def send_with_headers(message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        return send(message)

    return send_with_headers


@lru_cache(maxsize=1024)
def _prompt_headers(
    name: str, version: int, source: str | None = None, label: str | None = None
) -> tuple[tuple[bytes, bytes], ...]:
    headers: tuple[tuple[bytes, bytes], ...] = (
        (b"x-prompt-name", _name_header(name)),
        (b"x-prompt-version", str(version).encode("ascii")),
    )
    if label is not None:  # the version was chosen by this label (asked for, default, experiment)
        headers += ((b"x-prompt-label", _name_header(label)),)
    if source is not None:  # e.g. "fallback": served by a FallbackRegistry's second source
        headers += ((b"x-prompt-source", source.encode("ascii", "replace")),)
    return headers


def _name_header(name: str) -> bytes:
    """`name` percent-encoded to ASCII, spaces too (a header value cannot start or end with one).

    A name longer than `_MAX_NAME_HEADER` encoded bytes is cut there and ends in an encoded "…".
    """
    encoded = quote(name, safe=_NAME_SAFE, errors="surrogatepass")
    if len(encoded) > _MAX_NAME_HEADER:
        kept: list[str] = []
        size = len(_ELLIPSIS)
        for char in name:
            piece = quote(char, safe=_NAME_SAFE, errors="surrogatepass")
            size += len(piece)
            if size > _MAX_NAME_HEADER:
                break
            kept.append(piece)
        encoded = "".join(kept) + _ELLIPSIS
    return encoded.encode("ascii")


def _loose(path: str) -> bool:
    """Whether `path` is spelled in a way many servers read as another path: repeated or
    trailing slashes (nginx merges them, many routers drop a trailing one) or capitals (servers
    that ignore case). Cheap, so a canonical path that does not match costs nothing more."""
    return not path.islower() or "//" in path or path.endswith("/")


def _is_responses(path: str) -> bool:
    """`_canonical_path(path).endswith(RESPONSES_SUFFIX)`, without building the canonical path
    for a path already spelled canonically (then the two are the same)."""
    if path.endswith(RESPONSES_SUFFIX):  # its last segment stays last in the canonical path
        return True
    if path.endswith(CHAT_SUFFIX):  # likewise
        return False
    if path.startswith("/") and not _loose(path):
        return False
    return _canonical_path(path).endswith(RESPONSES_SUFFIX)


def _canonical_path(path: str) -> str:
    """`path` as a lenient server reads it: no empty segments, no trailing slash, lower case.

    `/v1/Chat//Completions/` is `/v1/chat/completions`: a guarded path however it is spelled, so
    a body sent to a spelling of it is examined, never forwarded unread to a server that routes
    that spelling to the endpoint."""
    return "/" + "/".join(part for part in path.lower().split("/") if part)


def _scan_headers(
    headers: Iterable[tuple[bytes, bytes]], limit: int
) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], bool]:
    """The headers for the app if the body is rewritten (all but the body's own), the
    content-encoding headers, and whether a content-length declares more than `limit` bytes."""
    kept: list[tuple[bytes, bytes]] = []
    codings: list[tuple[bytes, bytes]] = []
    too_large = False
    for header in headers:
        name = header[0]
        if len(name) in _BODY_HEADER_LENGTHS:  # else not one of them, in any case
            name = name.lower()
            if name in _BODY_HEADERS:
                if name == b"content-encoding":
                    codings.append(header)
                elif name == b"content-length" and _declares_more(header[1], limit):
                    too_large = True
                continue
        kept.append(header)
    return kept, codings, too_large


def _declares_more(length: bytes, limit: int) -> bool:
    """Whether a content-length value is a number above `limit` (int() refuses 4,300+ digits)."""
    if not length.isdigit():
        return False
    if len(length) <= 18:
        return int(length) > limit
    digits = length.lstrip(b"0")
    return len(digits) > len(str(limit)) or int(digits or b"0") > limit


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(f"Request body is larger than the {limit}-byte limit.")


def _tenant_pool(
    registry: PromptRegistry, allowed_hosts: Collection[str] | None
) -> LangfuseTenants:
    from .registries.fallback import FallbackRegistry
    from .registries.langfuse import LangfuseRegistry
    from .registries.tenants import LangfuseTenants

    cache = registry if isinstance(registry, CachedRegistry) else None
    base = cache.registry if cache is not None else registry
    if isinstance(base, FallbackRegistry):  # per-request keys are Langfuse's: the primary's
        base = base.primary
    if not isinstance(base, LangfuseRegistry):
        raise TypeError("allow_request_credentials=True needs a LangfuseRegistry")
    return LangfuseTenants(base, cache=cache, allowed_hosts=allowed_hosts)
