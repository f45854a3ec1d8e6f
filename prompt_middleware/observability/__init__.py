"""Metrics, traces and the access log: what was served, how often, how fast.

Off until `enable()` is called, and then only the parts whose extras are installed:
Prometheus series with `metrics` (`prometheus_client`), OpenTelemetry spans with `otel`
(`opentelemetry-api`; the application or `otlp_tracer_provider` supplies the SDK). While off,
every hook in the middleware, the cache and the upstream proxy is one `if`.

    from prompt_middleware import observability
    observer = observability.enable(prompt_labels=False)
    app.mount("/metrics", observability.metrics_app())

Hooks (called by the rest of the package; see docs/observability.md):
    active.request(handle, scope, receive, send) the gateway, per HTTP request (its access line)
    active.guard(handle, scope, receive, send)   PromptMiddleware, per guarded request
    record_error(exc)                            PromptMiddleware and the gateway, on an error
    record_outcome(outcome)                      the gateway, for what it answers itself
    active.cache_lookup(result)                  CachedRegistry.get_prompt
    fetch_timer(registry)                        CachedRegistry, around the registry call
    record_invalidation(origin)                  CachedRegistry.invalidate and its callers
    record_webhook(outcome)                      the gateway's webhook route
    active.upstream(proxy, scope, body)          UpstreamProxy, per upstream call
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.types import Message, Receive, Scope, Send

from ..core.errors import PromptMiddlewareError, PromptNotFound
from .access import ACCESS_LOGGER, JsonFormatter, configure_logging, log_access
from .usage import MAX_JSON_BODY, SSEUsage, Usage, ask_for_usage, usage_from_json

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider as SDKTracerProvider
    from prometheus_client import CollectorRegistry

    from ._metrics import Metrics, MetricsApp
    from ._tracing import Tracing

__all__ = [
    "ACCESS_LOGGER",
    "JsonFormatter",
    "Observer",
    "UpstreamCall",
    "active",
    "configure_gateway",
    "configure_logging",
    "disable",
    "enable",
    "fetch_timer",
    "langfuse_otlp",
    "metrics_app",
    "metrics_available",
    "otlp_tracer_provider",
    "prepare_multiprocess",
    "record_error",
    "record_outcome",
    "record_invalidation",
    "record_webhook",
    "tracing_available",
]

logger = logging.getLogger("prompt_middleware.observability")

active: Observer | None = None
"""The observer `enable()` installed, or None: what every hook checks first."""

_request: ContextVar[_Request | None] = ContextVar("prompt_middleware.request", default=None)
_registered: dict[int, Metrics] = {}  # id(CollectorRegistry) -> our series on it
_IDLE = contextlib.nullcontext()


def metrics_available() -> bool:
    """Whether the `metrics` extra (prometheus_client) is installed."""
    return _importable("prometheus_client")


def tracing_available() -> bool:
    """Whether the `otel` extra (opentelemetry-api) is installed."""
    return _importable("opentelemetry.trace")


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def enable(
    *,
    metrics: bool | None = None,
    tracing: bool | None = None,
    access_log: bool = True,
    prompt_labels: bool = False,
    registry: CollectorRegistry | None = None,
    tracer_provider: Any = None,
    stream_usage: bool = True,
) -> Observer:
    """Turn observability on for this process; returns the `Observer` now `active`.

    Args:
        metrics: Prometheus series; None: if prometheus_client is installed; True: required.
        tracing: OpenTelemetry spans; None: if opentelemetry-api is installed; True: required.
        access_log: one INFO line per guarded request on `prompt_middleware.access` (per
            request, for requests run through `Observer.request`, as the gateway does).
        prompt_labels: add `{prompt, version, label}` to the rewrite and upstream series.
        registry: the `prometheus_client.CollectorRegistry` to register on (default: the
            global `REGISTRY`). Registering twice on one registry reuses the series.
        tracer_provider: an OpenTelemetry `TracerProvider` (default: the global one).
        stream_usage: ask streaming chat calls for their usage (`stream_options.include_usage`)
            when the client did not, for the upstream span; what that adds to the stream is
            taken out before the client sees it.
    """
    global active  # noqa: PLW0603 - a module attribute, so each hook's check is one lookup
    if metrics is None:
        metrics = metrics_available()
    if tracing is None:
        tracing = tracing_available()
    built_metrics = _build_metrics(registry, prompt_labels) if metrics else None
    built_tracing = None
    if tracing:
        try:
            from ._tracing import Tracing
        except ImportError:
            raise RuntimeError(
                "tracing needs the otel extra: pip install 'prompt-middleware[otel]'"
            ) from None
        built_tracing = Tracing(tracer_provider)
    active = Observer(
        built_metrics, built_tracing, access_log=access_log, stream_usage=stream_usage
    )
    return active


OTLP_ENV = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def configure_gateway(
    *,
    prompt_labels: bool = False,
    otlp_endpoint: str | None = None,
    otlp_headers: Mapping[str, str] | None = None,
    metrics: bool | None = None,
    access_log: bool = True,
) -> Observer:
    """What the gateway does in each worker process, from its `metrics` and `tracing` config.

    Metrics when prometheus_client is installed (`metrics=True`: required). Spans only when an
    OTLP endpoint is configured here or in `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`, exported
    over OTLP/HTTP in batches (needs the otel-export extra; its absence is a RuntimeError
    naming it). Call `await observer.shutdown()` at shutdown so the last spans are sent.
    """
    provider = None
    if otlp_endpoint or any(os.environ.get(name) for name in OTLP_ENV):
        provider = otlp_tracer_provider(otlp_endpoint, otlp_headers)
    observer = enable(
        metrics=metrics,
        tracing=provider is not None,
        access_log=access_log,
        prompt_labels=prompt_labels,
        tracer_provider=provider,
    )
    observer.owned_provider = provider
    return observer


def langfuse_otlp(host: str, public_key: str, secret_key: str) -> tuple[str, dict[str, str]]:
    """Langfuse's OTLP traces endpoint and the Basic auth header for a project's keys."""
    import base64

    token = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode("ascii")
    return f"{host.rstrip('/')}/api/public/otel/v1/traces", {"Authorization": f"Basic {token}"}


def disable() -> None:
    """Turn every hook back into a no-op (registered series stay, for a later `enable`)."""
    global active  # noqa: PLW0603
    active = None


def _build_metrics(registry: CollectorRegistry | None, prompt_labels: bool) -> Metrics:
    try:
        import prometheus_client

        from ._metrics import Metrics
    except ImportError:
        raise RuntimeError(
            "metrics need the metrics extra: pip install 'prompt-middleware[metrics]'"
        ) from None
    target = prometheus_client.REGISTRY if registry is None else registry
    existing = _registered.get(id(target))
    if existing is not None and existing.registry is target:
        if existing.prompt_labels == prompt_labels:
            return existing
        existing.unregister()
    built = Metrics(target, prompt_labels=prompt_labels)
    _registered[id(target)] = built
    return built


def metrics_app(registry: CollectorRegistry | None = None) -> MetricsApp:
    """An ASGI app serving the metrics; in multi-process mode, every worker's, merged."""
    try:
        import prometheus_client

        from ._metrics import MetricsApp
    except ImportError:
        raise RuntimeError(
            "metrics need the metrics extra: pip install 'prompt-middleware[metrics]'"
        ) from None
    return MetricsApp(prometheus_client.REGISTRY if registry is None else registry)


def prepare_multiprocess(directory: str | os.PathLike[str] | None = None) -> Path:
    """Set up `PROMETHEUS_MULTIPROC_DIR` for several worker processes; see `_metrics`."""
    from ._metrics import prepare_multiprocess as prepare

    return prepare(directory)


def otlp_tracer_provider(
    endpoint: str | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    service_name: str = "prompt-middleware",
) -> SDKTracerProvider:
    """A `TracerProvider` exporting over OTLP/HTTP (the `otel-export` extra); see `_tracing`."""
    from ._tracing import otlp_tracer_provider as build

    return build(endpoint, headers, service_name=service_name)


def record_error(error: BaseException) -> None:
    """The request being handled is answered with `error` (called where it is)."""
    record = _request.get()
    if record is not None:
        record.error = error


def record_outcome(outcome: str) -> None:
    """The access line's outcome for the request being handled, e.g. `local` (the gateway
    answered it itself); a guarded request's own outcome wins."""
    record = _request.get()
    if record is not None and record.outcome is None:
        record.outcome = outcome


def record_invalidation(origin: str, count: int = 1) -> None:
    """`count` cache invalidations from `origin`: webhook, pubsub, poll, watch or api."""
    observer = active
    if observer is not None and observer.metrics is not None:
        observer.metrics.invalidations.labels(origin).inc(count)


def record_webhook(outcome: str) -> None:
    """One webhook delivery answered, e.g. accepted, ignored, duplicate, unauthorized, invalid."""
    observer = active
    if observer is not None and observer.metrics is not None:
        observer.metrics.webhooks.labels(outcome).inc()


def fetch_timer(registry: object) -> contextlib.AbstractContextManager[None]:
    """Wrap one registry call: its duration and outcome, and failures by reason."""
    observer = active
    if observer is None or observer.metrics is None:
        return _IDLE
    return _timed_fetch(observer.metrics, _source(registry))


@contextlib.contextmanager
def _timed_fetch(metrics: Metrics, source: str) -> Iterator[None]:
    start = time.perf_counter()
    outcome, reason = "ok", None
    try:
        yield
    except PromptNotFound:
        outcome = "not_found"
        raise
    except TimeoutError:
        outcome, reason = "error", "timeout"
        raise
    except PromptMiddlewareError as exc:
        outcome, reason = "error", _REASONS.get(exc.code, exc.code)
        raise
    except Exception:
        outcome, reason = "error", "unexpected"
        raise
    except BaseException:  # cancelled: neither a success nor the registry's failure
        outcome = "cancelled"
        raise
    finally:
        metrics.fetch_duration.labels(source, outcome).observe(time.perf_counter() - start)
        if reason is not None:
            metrics.fetch_errors.labels(source, reason).inc()


_REASONS = {
    "prompt_registry_unavailable": "unavailable",
    "prompt_registry_auth_failed": "auth_failed",
    "invalid_prompt": "invalid_prompt",
}


def _source(registry: object) -> str:
    source = getattr(registry, "source", None)
    if isinstance(source, str):
        return source
    name = type(registry).__name__.lower()
    if name.endswith("registry") and len(name) > len("registry"):
        name = name[: -len("registry")]
    return {"inmemory": "memory", "file": "files"}.get(name, name)


def _endpoint(path: str) -> str:
    if path.endswith("/chat/completions"):
        return "chat_completions"
    if path.endswith("/responses"):
        return "responses"
    return "other"


def _status_class(status: int | None) -> str:
    return "error" if status is None else f"{status // 100}xx"


class _Request:
    """What one request did, filled in by the hooks as it goes."""

    __slots__ = (
        "cache",
        "error",
        "label",
        "outcome",
        "prompt",
        "start",
        "status",
        "upstream_seconds",
        "whole",
    )

    def __init__(self, *, whole: bool = False) -> None:
        self.start = time.perf_counter()
        self.status: int | None = None
        self.cache: str | None = None
        self.error: BaseException | None = None
        self.upstream_seconds: float | None = None
        # Set by `Observer.request`: the access line is written there, for the whole request;
        # a guard inside only fills in the prompt fields.
        self.whole = whole
        self.prompt: Any = None
        self.label: str | None = None
        self.outcome: str | None = None


def _status_to(record: _Request, send: Send) -> Send:
    """`send`, noting the response's status in `record` for the access line."""

    # A plain function handing back `send`'s own awaitable: no coroutine frame per message.
    def observed_send(message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            record.status = message["status"]
        return send(message)

    return observed_send


def _outcome(error: BaseException | None, prompt: Any) -> str:
    if error is not None:
        return error.code if isinstance(error, PromptMiddlewareError) else "error"
    return "rewritten" if prompt is not None else "passed"


def _write_access(
    scope: Scope, record: _Request, prompt: Any, label: str | None, outcome: str
) -> None:
    upstream = record.upstream_seconds
    log_access(
        {
            "method": scope["method"],
            "path": scope["path"],
            "status": record.status if record.status is not None else "-",
            "duration_ms": round((time.perf_counter() - record.start) * 1000, 2),
            "prompt": None if prompt is None else prompt.name,
            "version": None if prompt is None else prompt.version,
            "label": label,
            "cache": record.cache,
            "upstream_ms": None if upstream is None else round(upstream * 1000, 2),
            "outcome": outcome,
        }
    )


class Observer:
    """The hooks' target while observability is on; built by `enable()`."""

    def __init__(
        self,
        metrics: Metrics | None,
        tracing: Tracing | None,
        *,
        access_log: bool = True,
        stream_usage: bool = True,
    ) -> None:
        self.metrics = metrics
        self.tracing = tracing
        self.access_log = access_log
        self.stream_usage = stream_usage
        self.owned_provider: Any = None  # a TracerProvider `configure_gateway` made for us

    async def shutdown(self) -> None:
        """Send the spans still queued and stop the exporter `configure_gateway` started."""
        provider, self.owned_provider = self.owned_provider, None
        if provider is not None:
            import anyio.to_thread

            # Blocking: it joins the export thread, which may be sending.
            await anyio.to_thread.run_sync(provider.shutdown)

    async def guard(
        self,
        handle: Callable[[Scope, Receive, Send], Awaitable[None]],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """Run `handle` (the middleware's own handling) for one guarded request, observed."""
        outer = _request.get()
        whole = outer is not None and outer.whole
        record = outer if outer is not None and whole else _Request()
        if scope.get("state") is None:  # so that the prompt the middleware puts there is seen
            scope = {**scope, "state": {}}
        state: dict[str, Any] = scope["state"]
        span = token = None
        if self.tracing is not None:
            started = self.tracing.start_request(scope["headers"])
            if started is not None:
                span, token = started

        if not whole and self.access_log and ACCESS_LOGGER.isEnabledFor(logging.INFO):
            # Only the access line reads the status: no wrapper (one more call per message)
            # when there is none, or when `request` around this one reads it.
            send = _status_to(record, send)

        reset = _request.set(record)
        try:
            await handle(scope, receive, send)
        except BaseException as exc:
            record.error = record.error or exc
            raise
        finally:
            _request.reset(reset)
            self._finish(scope, state, record, span, token, log=not whole)

    async def request(
        self,
        handle: Callable[[Scope, Receive, Send], Awaitable[None]],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        """Run `handle` for any HTTP request with one access line for it, whichever layer
        answers: a guarded request inside adds its prompt fields to this line instead of
        writing its own. Outcome: the guard's, else the error's code, else `passed`."""
        if not (self.access_log and ACCESS_LOGGER.isEnabledFor(logging.INFO)):
            await handle(scope, receive, send)
            return
        record = _Request(whole=True)
        reset = _request.set(record)
        try:
            await handle(scope, receive, _status_to(record, send))
        except BaseException as exc:
            record.error = record.error or exc
            raise
        finally:
            _request.reset(reset)
            outcome = record.outcome
            if outcome is None:
                outcome = _outcome(record.error, None)
            _write_access(scope, record, record.prompt, record.label, outcome)

    def _finish(
        self,
        scope: Scope,
        state: dict[str, Any],
        record: _Request,
        span: Any,
        token: Any,
        *,
        log: bool = True,
    ) -> None:
        prompt = state.get("prompt")
        label = state.get("prompt_label")
        error = record.error
        outcome = _outcome(error, prompt)
        metrics = self.metrics
        if metrics is not None:
            endpoint = _endpoint(scope["path"])
            if metrics.prompt_labels:
                name, version = ("", "") if prompt is None else (prompt.name, str(prompt.version))
                values: tuple[str, ...] = (endpoint, outcome, name, version, label or "")
            else:
                values = (endpoint, outcome)
            metrics.rewrite(values).inc()
        if span is not None and self.tracing is not None:
            identity = None if prompt is None else (prompt.name, prompt.version, label)
            self.tracing.end_request(
                span, token, prompt=identity, outcome=outcome, cache=record.cache, error=error
            )
        if not log:
            record.prompt, record.label, record.outcome = prompt, label, outcome
        elif self.access_log and ACCESS_LOGGER.isEnabledFor(logging.INFO):
            _write_access(scope, record, prompt, label, outcome)

    def cache_lookup(self, result: str) -> None:
        """One prompt cache lookup: hit, stale, miss or negative_hit."""
        if self.metrics is not None:
            self.metrics.lookup(result).inc()
        record = _request.get()
        if record is not None:
            record.cache = result

    def upstream(self, proxy: Any, scope: Scope, body: bytes | None) -> UpstreamCall:
        """Begin observing one upstream call; `body` is the request body if it is in one piece."""
        return UpstreamCall(self, proxy, scope, body)


_OPERATIONS = (
    ("/chat/completions", "chat"),
    ("/responses", "chat"),
    ("/completions", "text_completion"),
    ("/embeddings", "embeddings"),
)
_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})


class UpstreamCall:
    """One call `UpstreamProxy` makes, seen from its side. The proxy, in this order:

    1. sends `body` (may carry `stream_options.include_usage`) with `prepare(headers)` applied;
    2. `response_start(status, headers)` when the response starts;
    3. passes every body chunk through `chunk()` and sends what it returns;
    4. `end(error)` once the exchange is over (error: the failure, or None).
    """

    __slots__ = (
        "_decoder",
        "_json",
        "_json_size",
        "_observer",
        "_prompt",
        "_sse",
        "_start",
        "_status",
        "_strip",
        "_upstream",
        "body",
        "request_model",
        "span",
    )

    def __init__(self, observer: Observer, proxy: Any, scope: Scope, body: bytes | None) -> None:
        self._observer = observer
        self._start = time.perf_counter()
        self._status: int | None = None
        self._sse: SSEUsage | None = None
        self._json: list[bytes] | None = None
        self._json_size = 0
        self._decoder: Any = None
        self._strip = False
        self.body = body
        self.request_model: str | None = None
        self.span: Any = None
        name = getattr(proxy, "name", None)
        base = getattr(proxy, "base_url", None)
        self._upstream = name if isinstance(name, str) else (base.host if base else "upstream")
        state = scope.get("state")
        prompt = state.get("prompt") if state else None
        label = state.get("prompt_label") if state else None
        self._prompt = None if prompt is None else (prompt.name, prompt.version, label)
        tracing = observer.tracing
        if tracing is None:
            return
        path: str = scope["path"]
        operation = next((op for suffix, op in _OPERATIONS if path.endswith(suffix)), None)
        span = tracing.start_upstream(operation)
        if span is None or not span.is_recording():  # no SDK, or sampled out: nothing to do
            return
        self.span = span
        if body is not None and operation is not None:
            self.request_model = usage_from_json(body).model
            if observer.stream_usage and path.endswith("/chat/completions"):
                asked = ask_for_usage(body)
                if asked is not None:
                    self.body, self._strip = asked, True
        attributes: dict[str, Any] = {"server.address": self._upstream}
        if operation is not None:
            attributes["gen_ai.operation.name"] = operation
            attributes["gen_ai.provider.name"] = "openai"
        if self.request_model is not None:
            attributes["gen_ai.request.model"] = self.request_model
            if operation is not None:
                span.update_name(f"{operation} {self.request_model}")
        if self._prompt is not None:
            from ._tracing import prompt_attributes

            attributes.update(prompt_attributes(*self._prompt))
        span.set_attributes(attributes)

    def prepare(self, headers: list[tuple[bytes, bytes]]) -> None:
        """Edit the headers to forward in place: our `traceparent` replaces the client's."""
        if self.span is None or self._observer.tracing is None:
            return
        headers[:] = [
            (name, value)
            for name, value in headers
            if name not in _TRACE_HEADERS and not (self._strip and name == b"accept-encoding")
        ]
        headers.extend(self._observer.tracing.inject(self.span))
        if self._strip:
            # What include_usage adds can be taken out only of a stream we can read.
            headers.append((b"accept-encoding", b"identity"))

    def response_start(self, status: int, headers: Any) -> None:
        self._status = status
        if self.span is None:
            return
        content_type = str(headers.get("content-type", "")).lower()
        encoding = str(headers.get("content-encoding", "identity")).lower()
        if content_type.startswith("text/event-stream"):
            if encoding == "identity":
                self._sse = SSEUsage(strip=self._strip)
        elif "json" in content_type:
            if encoding in ("gzip", "x-gzip", "deflate"):
                self._decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)
            if encoding == "identity" or self._decoder is not None:
                self._json = []

    def chunk(self, data: bytes, *, last: bool = False) -> bytes:
        """The bytes to send the client for upstream `data`; `last=True` for the final piece."""
        if self._sse is not None:
            out = self._sse.feed(data) if data else b""
            return out + self._sse.flush() if last else out
        if self._json is not None and data:
            self._json_size += len(data)
            if self._json_size > MAX_JSON_BODY:
                self._json = None
            else:
                self._json.append(data)
        return data

    def end(self, error: BaseException | None = None) -> None:
        seconds = time.perf_counter() - self._start
        status = None if error is not None and self._status is None else self._status
        observer = self._observer
        metrics = observer.metrics
        if metrics is not None:
            values: tuple[str, ...] = (self._upstream, _status_class(status))
            if metrics.prompt_labels:
                name, version, label = ("", "", "") if self._prompt is None else self._prompt
                values = (*values, name, str(version), label or "")
            metrics.upstream(values).observe(seconds)
        record = _request.get()
        if record is not None:
            record.upstream_seconds = seconds
        if self.span is None or observer.tracing is None:
            return
        usage = self._usage()
        attributes: dict[str, Any] = {}
        if status is not None:
            attributes["http.response.status_code"] = status
        if usage.model is not None:
            attributes["gen_ai.response.model"] = usage.model
        if usage.response_id is not None:
            attributes["gen_ai.response.id"] = usage.response_id
        if usage.finish_reasons:
            attributes["gen_ai.response.finish_reasons"] = usage.finish_reasons
        if usage.input_tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.input_tokens
        if usage.output_tokens is not None:
            attributes["gen_ai.usage.output_tokens"] = usage.output_tokens
        observer.tracing.end_upstream(self.span, attributes, error, status)

    def _usage(self) -> Usage:
        if self._sse is not None:
            return self._sse.usage
        if self._json:
            body = b"".join(self._json)
            if self._decoder is not None:
                try:
                    body = self._decoder.decompress(body, MAX_JSON_BODY)
                except zlib.error:
                    return Usage()
            return usage_from_json(body)
        return Usage()
