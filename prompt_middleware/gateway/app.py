"""The gateway's ASGI app: client keys, health, model aliases and upstream routing.

    GatewayApp           /health, /health/ready; client keys, checked first; GET /v1/models;
      PromptMiddleware   the prompt rewrite (aliases bound to prompts are its `model_prompts`)
        _Router          the request's upstream: an alias's own, else the default
          UpstreamProxy / EchoUpstream, one per configured upstream

Also served, without a client key: `GET {metrics.path}` (the Prometheus series, DESIGN §11) and
the webhook route (signed instead). Metrics, spans and the access log are switched on per worker
at lifespan startup (`observing.GatewayObservability`).

`build_app(config)` builds it; `create_app()` is the factory uvicorn's workers import
(`prompt_middleware.gateway.app:create_app`), reading the config path and command-line overrides
from the `PROMPT_MIDDLEWARE_SERVE` environment variable.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import anyio
import anyio.abc
import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import observability
from .._asgi import Background, read_body, replay, route_path, send_error, send_json
from ..core._json import draft_object, dump_json, exact_object
from ..core.encoding import content_coding, decodable, decode_body
from ..core.errors import InvalidApiKey, PromptMiddlewareError, PromptNotFound
from ..core.experiments import Experiment, check_experiments
from ..core.references import ModelPrompt
from ..middleware import PromptMiddleware
from ..registries.base import PromptRegistry
from ..registries.cache import CachedRegistry
from ..registries.coherence import Coherence
from ..registries.fallback import FallbackRegistry
from ..registries.files import FileRegistry
from ..registries.langfuse import LangfuseRegistry
from ._gc import settle_collector
from ._logsafe import redact_uvicorn_access_log
from .config import ECHO, ConfigError, GatewayConfig, UpstreamConfig, load_config
from .echo import EchoUpstream
from .observing import GatewayObservability, count_webhooks
from .upstream import UpstreamProxy

__all__ = ["SERVE_ENV", "ClientKeys", "GatewayApp", "Readiness", "build_app", "create_app"]

logger = logging.getLogger("prompt_middleware.gateway")

SERVE_ENV: Final = "PROMPT_MIDDLEWARE_SERVE"
HEALTH_PATH: Final = "/health"
READY_PATH: Final = "/health/ready"
MODELS_PATHS: Final = ("/v1/models", "/models")
# A name no registry holds: asking for it shows the registry answers (not found is an answer).
PROBE_NAME: Final = "prompt-middleware/readiness-probe"
_CREDENTIAL_HEADERS: Final = frozenset({b"authorization", b"api-key", b"x-api-key"})
_BEARER: Final = b"bearer "
_UPSTREAM: Final = "prompt_middleware.upstream"  # scope key: the upstream app chosen for a request
_PROMPT_ID: Final = re.compile(rb'"prompt_id"|\\u')
_ROUTE_FIELDS: Final = frozenset({"model", "prompt_id"})  # repeating one is refused
_WWW_AUTHENTICATE: Final = [(b"www-authenticate", b"Bearer")]
_LOCAL: Final = "local"  # the access log's outcome for what the gateway answers itself


class ClientKeys:
    """The gateway's client keys, checked in constant time.

    A client presents a key as `Authorization: Bearer <key>` (OpenAI's clients), `api-key`
    (Azure's) or `x-api-key` (Anthropic's). Each presented value is hashed and compared with
    every key's hash, all of them, so neither the time taken nor an early exit says which key or
    how much of one matched. Also usable as `PromptMiddleware(authorize=keys)`.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(hashlib.sha256(key.encode()).digest() for key in keys)
        if not self._digests:
            raise ValueError("ClientKeys needs at least one key")

    def __repr__(self) -> str:
        return f"ClientKeys(<{len(self._digests)} keys>)"

    def __len__(self) -> int:
        return len(self._digests)

    def allows(self, scope: Scope) -> bool:
        matched = False
        for raw_name, value in scope["headers"]:
            name = raw_name.lower()
            if name not in _CREDENTIAL_HEADERS:
                continue
            if name == b"authorization":
                if value[:7].lower() != _BEARER:
                    continue
                key = value[7:]
            else:
                key = value
            digest = hashlib.sha256(key.strip()).digest()
            for expected in self._digests:
                matched |= hmac.compare_digest(digest, expected)
        return matched

    async def __call__(self, scope: Scope) -> None:
        if not self.allows(scope):
            raise InvalidApiKey("Missing or invalid API key for this gateway.")


class Readiness:
    """Whether the registry has answered once and every preloaded prompt is cached, and every
    label an experiment may choose has a prompt version (else not ready, naming them)."""

    def __init__(
        self,
        registry: PromptRegistry,
        preload: Iterable[str] = (),
        experiments: Mapping[str, Experiment] | None = None,
    ) -> None:
        self.registry = registry
        self.preload = tuple(preload)
        self.experiments = dict(experiments or {})
        self.ready = False

    async def run(self, *, max_delay: float = 30.0) -> None:
        """Try until ready, backing off between attempts; then return."""
        delay = 0.25
        failing = ""
        while True:
            try:
                await self._check()
            except Exception as exc:
                reason = f"{type(exc).__name__}: {getattr(exc, 'message', '') or exc}"
                if reason != failing:
                    # A missing prompt will not come back by itself: someone has to act.
                    level = logging.ERROR if isinstance(exc, PromptNotFound) else logging.WARNING
                    logger.log(level, "not ready yet: %s (retrying)", reason)
                    failing = reason
            else:
                self.ready = True
                logger.info("ready: the prompt registry answers")
                return
            await anyio.sleep(delay)
            delay = min(delay * 2, max_delay)

    async def _check(self) -> None:
        if not self.preload and not self.experiments:
            with contextlib.suppress(PromptNotFound):
                await self.registry.get_prompt(PROBE_NAME)
        for name in self.preload:
            await self.registry.get_prompt(name)
        if self.experiments:
            await check_experiments(self.experiments, self.registry)


@dataclass(frozen=True, slots=True)
class _Alias:
    model: str
    upstream: ASGIApp
    bound: bool  # bound to a prompt: the middleware sets the model when it applies the binding


class GatewayApp:
    """The deployed gateway; see the module docstring for its layers."""

    def __init__(
        self,
        middleware: PromptMiddleware,
        router: _Router,
        aliases: Mapping[str, _Alias],
        *,
        keys: ClientKeys | None = None,
        readiness: Readiness | None = None,
        list_models: bool = False,
        coherence: Coherence | None = None,
        webhook_path: str | None = None,
        observe: GatewayObservability | None = None,
        gc_threshold: int = 0,
    ) -> None:
        self.middleware = middleware
        self._gc_threshold = gc_threshold
        self.observe = observe
        self._metrics = observe.metrics_app if observe is not None else None
        self._metrics_path = observe.metrics_path if observe is not None else None
        self.coherence = coherence
        # Signed instead of keyed: Langfuse sends no client key (DESIGN §10).
        self._webhook = (
            count_webhooks(coherence.webhook_app)
            if coherence is not None and coherence.webhook_app is not None
            else None
        )
        self._webhook_path = webhook_path
        self.router = router
        self.keys = keys
        self.readiness = readiness
        self._aliases = dict(aliases)
        created = int(time.time())
        self._models = {
            alias: {"id": alias, "object": "model", "created": created, "owned_by": "gateway"}
            for alias in self._aliases
        }
        self._list_models = list_models
        default = router.default
        # Bodies naming these must be parsed here: their model changes or their upstream does.
        peek = [a for a, r in self._aliases.items() if not r.bound or r.upstream is not default]
        # These matter here only with the client's own prompt_id (then the binding does not apply).
        bound = [a for a, r in self._aliases.items() if r.bound and r.upstream is default]
        self._peek = _alias_pattern(peek)
        self._bound = _alias_pattern(bound)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            observer = observability.active
            if observer is None:
                await self._http(scope, receive, send)
            else:  # the access log: one line for every request, whoever answers it
                await observer.request(self._http, scope, receive, send)
            return
        if kind == "websocket" and self.keys is not None and not self.keys.allows(scope):
            await receive()  # websocket.connect; closing before accepting refuses it (403)
            await send({"type": "websocket.close", "code": 1008})
            return
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        await self.middleware(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope)
        method = scope["method"]
        unkeyed = self._unkeyed(method, path)
        if unkeyed is not None:
            observability.record_outcome(_LOCAL)
            await unkeyed(scope, receive, send)
            return
        if self.keys is not None:
            if not self.keys.allows(scope):
                error = _invalid_key()
                observability.record_error(error)
                await send_error(send, error, _WWW_AUTHENTICATE)
                return
            scope = _without_credentials(scope)
        if method == "GET" and self._list_models and self._answer_models(path):
            observability.record_outcome(_LOCAL)
            await self._models_answer(path, send)
            return
        if method == "POST" and (self._peek is not None or self._bound is not None):
            await self._route(scope, receive, send)
            return
        await self.middleware(scope, receive, send)

    def _unkeyed(self, method: str, path: str) -> ASGIApp | None:
        """The routes that need no client key: health, the signed webhook, metrics (which name
        no prompt unless `metrics.prompt_labels`)."""
        if method == "GET" and path in (HEALTH_PATH, READY_PATH):
            return self._health
        if self._webhook is not None and path == self._webhook_path:
            return self._webhook
        if self._metrics is not None and path == self._metrics_path and method in ("GET", "HEAD"):
            return self._metrics
        return None

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        if route_path(scope) == HEALTH_PATH:
            await send_json(send, 200, {"status": "ok"})
        elif self.readiness is None or self.readiness.ready:
            await send_json(send, 200, {"status": "ready"})
        else:
            await send_json(send, 503, {"status": "starting"}, [(b"retry-after", b"1")])

    def _answer_models(self, path: str) -> bool:
        if path in MODELS_PATHS:
            return True
        prefix, _, alias = path.rpartition("/")
        return prefix in MODELS_PATHS and alias in self._models

    async def _models_answer(self, path: str, send: Send) -> None:
        if path in MODELS_PATHS:
            await send_json(send, 200, {"object": "list", "data": list(self._models.values())})
        else:
            await send_json(send, 200, self._models[path.rpartition("/")[2]])

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read the body once, find an alias's upstream and model, hand the body on."""
        codings = [h for h in scope["headers"] if h[0].lower() == b"content-encoding"]
        coding = content_coding(codings) if codings else ""
        if not decodable(coding):
            await self.middleware(scope, receive, send)
            return
        limit = self.middleware.max_body_size
        try:
            body = await read_body(receive, limit, self.middleware.body_timeout)
            if body is None:  # the client left
                return
            decoded = decode_body(body, coding, limit) if coding else body
            routed = self._pick(decoded)
        except PromptMiddlewareError as exc:
            observability.record_error(exc)
            await send_error(send, exc)
            return
        if routed is None:
            await self.middleware(scope, replay(body, receive), send)
            return
        upstream, new_body = routed
        scope = {**scope, _UPSTREAM: upstream}
        if new_body is not None:
            body = new_body
            headers = [h for h in scope["headers"] if h[0].lower() not in _BODY_HEADERS]
            headers.append((b"content-length", str(len(body)).encode("ascii")))
            scope["headers"] = headers
        await self.middleware(scope, replay(body, receive), send)

    def _pick(self, body: bytes) -> tuple[ASGIApp, bytes | None] | None:
        """The upstream for `body`'s alias and the body with the real model (None: unchanged)."""
        if not (
            (self._peek is not None and self._peek.search(body))
            or (self._bound is not None and self._bound.search(body) and _PROMPT_ID.search(body))
        ):
            return None
        draft = draft_object(body)
        if draft is None:  # JSON, not an object
            return None
        if isinstance(draft, dict):  # orjson's reading is exact in keys and strings: enough here
            model = draft.get("model")
            if not isinstance(model, str) or model not in self._aliases:
                return None
        data = exact_object(body, draft, _ROUTE_FIELDS)
        model = data.get("model") if data is not None else None
        alias = self._aliases.get(model) if isinstance(model, str) else None
        if data is None or alias is None:
            return None
        if alias.bound and data.get("prompt_id") is None:
            return alias.upstream, None  # the middleware applies the binding, model included
        if alias.model == model:
            return alias.upstream, None
        data["model"] = alias.model
        return alias.upstream, dump_json(data)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Lifespan passes on; once started, readiness and coherence run in the background.

        They are stopped, and awaited, as soon as the server asks to shut down: before the
        middleware closes the registries they use (the poller and the Redis subscriber use
        them), and so before the server hears that shutdown is complete.
        """
        error: Exception | None = None
        jobs = [job.run for job in (self.readiness, self.coherence) if job is not None]
        background = Background(jobs)
        async with anyio.create_task_group() as task_group:

            async def started(message: Message) -> None:
                kind = message["type"]
                if kind == "lifespan.startup.complete":
                    if self.observe is not None:
                        self.observe.start()
                    background.start(task_group)
                    settle_collector(self._gc_threshold)
                elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                    # Before the server may exit: it stops the event loop once told.
                    await background.stop()
                    if self.observe is not None:
                        await self.observe.stop()
                await send(message)

            try:
                await self.middleware(scope, background.stopping_at_shutdown(receive), started)
            except Exception as exc:  # re-raised as itself, not in an ExceptionGroup
                error = exc
            finally:
                task_group.cancel_scope.cancel()
        if error is not None:
            raise error


class _Router:
    """Sends each request to the upstream `GatewayApp` chose for it, else the default one."""

    def __init__(self, upstreams: Mapping[str, ASGIApp], default: str) -> None:
        self.upstreams = dict(upstreams)
        self.default = self.upstreams[default]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        await scope.get(_UPSTREAM, self.default)(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for upstream in self.upstreams.values():
                    if isinstance(upstream, UpstreamProxy):
                        await upstream.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


_BODY_HEADERS: Final = frozenset({b"content-length", b"transfer-encoding", b"content-encoding"})


def _alias_pattern(aliases: list[str]) -> re.Pattern[bytes] | None:
    """A pattern found in every JSON body that could name one of `aliases` (None: no aliases).

    Escaped spellings (any `\\u` escape, `\\/`) count as possible matches; they are rare.
    """
    if not aliases:
        return None
    texts = [re.escape(json.dumps(a, ensure_ascii=False)[1:-1].encode()) for a in aliases]
    return re.compile(b"|".join([*texts, rb"\\u", rb"\\/"]))


def _without_credentials(scope: Scope) -> Scope:
    """The scope without the client's gateway key: it is never forwarded."""
    headers = [h for h in scope["headers"] if h[0].lower() not in _CREDENTIAL_HEADERS]
    return {**scope, "headers": headers}


def _invalid_key() -> InvalidApiKey:
    return InvalidApiKey(
        "Missing or invalid API key for this gateway: send it as Authorization: Bearer <key>."
    )


# Building


def build_app(config: GatewayConfig, *, own_process: bool = False) -> GatewayApp:
    """The gateway `config` describes. `ConfigError` for what only shows when building.

    `own_process`: the gateway is all the process runs (as under `serve`), so once started it
    may set the process's garbage collector (`server.gc_threshold`, `_gc.py`).
    """
    # The gateway runs under uvicorn, whose access line shows the query: keep its values out.
    redact_uvicorn_access_log()
    registry = _registry(config)
    cache: PromptRegistry = registry
    ttl = config.cache.ttl
    if ttl > 0:
        cache = CachedRegistry(
            registry,
            ttl=ttl,
            max_size=config.cache.max_size,
            negative_ttl=config.cache.negative_ttl,
            negative_max_size=config.cache.negative_max_size,
            max_stale=config.cache.max_stale,
            fetch_timeout=config.cache.fetch_timeout,
        )
    upstreams = {u.name: _upstream(u) for u in config.upstreams}
    router = _Router(upstreams, config.upstreams[0].name)
    aliases = {
        m.alias: _Alias(m.model, upstreams[m.upstream], m.prompt_id is not None)
        for m in config.models
    }
    model_prompts = {
        m.alias: ModelPrompt(m.prompt_id, m.model, m.prompt_version, m.prompt_label)
        for m in config.models
        if m.prompt_id is not None
    }
    rewrite = config.rewrite
    experiments = {
        name: Experiment(tuple(spec.labels.items()), spec.sticky)
        for name, spec in config.experiments.items()
    }
    middleware = PromptMiddleware(
        router,
        registry=cache,
        cache_ttl=ttl,
        max_body_size=config.server.max_body_size,
        body_timeout=config.server.body_timeout,
        strict_variables=rewrite.strict_variables,
        client_messages=rewrite.client_messages,
        text_role=rewrite.text_role,
        model_prompts=model_prompts,
        experiments=experiments,
    )
    keys = ClientKeys(config.auth.keys) if config.auth.keys else None
    webhook = config.webhooks.langfuse if config.webhooks is not None else None
    return GatewayApp(
        middleware,
        router,
        aliases,
        keys=keys,
        readiness=Readiness(middleware.registry, config.registry.preload, middleware.experiments),
        list_models=bool(config.models),
        coherence=_coherence(config, middleware),
        webhook_path=webhook.path if webhook is not None else None,
        observe=GatewayObservability(config),
        gc_threshold=config.server.gc_threshold if own_process else 0,
    )


def _coherence(config: GatewayConfig, middleware: PromptMiddleware) -> Coherence | None:
    """Webhooks, Redis and polling (DESIGN §10), when the config asks for any of them."""
    webhook = config.webhooks.langfuse if config.webhooks is not None else None
    cache = config.cache
    if webhook is None and cache.redis_url is None and cache.poll_interval is None:
        return None
    if not isinstance(middleware.registry, CachedRegistry):
        raise ConfigError(
            f"{config.source}: webhooks, redis_url and poll_interval need cache.ttl > 0"
        )
    if cache.redis_url is not None:
        try:
            import coredis  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"{config.source}: cache.redis_url needs the redis extra: "
                "pip install 'prompt-middleware[redis]'"
            ) from None
    try:
        return Coherence(
            middleware.registry,
            webhook_secrets=webhook.secrets if webhook is not None else (),
            tolerance=webhook.tolerance if webhook is not None else 300.0,
            redis_url=cache.redis_url,
            cache_ttl=cache.ttl,
            poll_interval=cache.poll_interval,
        )
    except ValueError as exc:
        raise ConfigError(f"{config.source}: {exc}") from None


def _registry(config: GatewayConfig) -> PromptRegistry:
    settings = config.registry
    try:
        primary: PromptRegistry
        if settings.files is not None:
            primary = FileRegistry(settings.files, watch=settings.watch)
        else:
            langfuse = settings.langfuse
            assert langfuse is not None  # load_config checked there is a registry
            primary = LangfuseRegistry(
                langfuse.public_key,
                langfuse.secret_key,
                # base_url: the file's host wins over LANGFUSE_BASE_URL, as documented.
                base_url=langfuse.host,
                timeout=langfuse.timeout,
                max_response_size=langfuse.max_response_size,
                max_connections=langfuse.max_connections,
            )
        if settings.fallback_files is None:
            return primary
        # Kept under the cache's fetch_timeout, so the fallback answers before the cache gives up.
        timeout = config.cache.fetch_timeout
        primary_timeout = 5.0 if timeout is None else min(5.0, timeout / 2)
        return FallbackRegistry(
            primary, FileRegistry(settings.fallback_files), primary_timeout=primary_timeout
        )
    except ValueError as exc:
        raise ConfigError(f"{config.source}: registry: {exc}") from None


def _upstream(upstream: UpstreamConfig) -> ASGIApp:
    if upstream.base_url == ECHO:
        return EchoUpstream()
    headers = dict(upstream.headers)
    if upstream.api_key:
        headers["Authorization"] = f"Bearer {upstream.api_key}"
    t = upstream.timeout
    timeout = httpx.Timeout(connect=t.connect, read=t.read, write=t.write, pool=t.pool)
    return UpstreamProxy(upstream.base_url, headers=headers or None, timeout=timeout)


def serve_environment(path: str | None, overrides: Mapping[str, Any]) -> str:
    """The value of `SERVE_ENV` that makes `create_app` load this configuration."""
    return json.dumps({"config": path, "overrides": dict(overrides)})


def create_app() -> GatewayApp:
    """The app for one of uvicorn's worker processes, from `SERVE_ENV` (set by `serve`)."""
    try:
        spec = json.loads(os.environ[SERVE_ENV])
    except (KeyError, ValueError):
        message = f"{SERVE_ENV} is not set: start workers with prompt-middleware serve"
        raise RuntimeError(message) from None
    config = load_config(spec["config"], spec["overrides"])
    observability.configure_logging(config.server.log_level, config.server.log_format)
    return build_app(config, own_process=True)
