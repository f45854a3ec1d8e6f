"""OpenTelemetry spans through `opentelemetry-api` only (the `otel` extra).

The SDK and an exporter are the application's choice; `otlp_tracer_provider` builds the one the
gateway uses (the `otel-export` extra) to send spans to Langfuse or any OTLP/HTTP collector.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider as SDKTracerProvider

__all__ = [
    "Tracing",
    "otlp_tracer_provider",
    "prompt_attributes",
]

_PROPAGATED = frozenset({b"traceparent", b"tracestate", b"baggage"})
_UNKNOWN = object()


@lru_cache(maxsize=1024)
def prompt_attributes(name: str, version: int, label: str | None) -> Mapping[str, Any]:
    """The attributes that tie a span to a prompt version: OpenTelemetry's GenAI names, and the
    ones Langfuse reads to link an observation to its prompt (it does not read `gen_ai.prompt.*`).
    Built once per prompt version and label (read-only).
    """
    attributes: dict[str, Any] = {
        "gen_ai.prompt.name": name,
        "gen_ai.prompt.version": str(version),
        "langfuse.observation.prompt.name": name,
        "langfuse.observation.prompt.version": version,
    }
    if label is not None:
        attributes["prompt_middleware.prompt.label"] = label
    return MappingProxyType(attributes)


@lru_cache(maxsize=4096)
def _request_end(
    prompt: tuple[str, int, str | None] | None, outcome: str, cache: str | None
) -> tuple[str | None, Mapping[str, Any]]:
    """The rewrite span's name (None: unchanged) and final attributes, built once per
    combination: the SDK copies them, so one read-only mapping serves every request."""
    attributes = {} if prompt is None else dict(prompt_attributes(*prompt))
    attributes["prompt_middleware.outcome"] = outcome
    if cache is not None:
        attributes["prompt_middleware.cache.result"] = cache
    name = None if prompt is None else f"rewrite {prompt[0]}"
    return name, MappingProxyType(attributes)


class Tracing:
    """Starts our spans on `tracer_provider` (default: the global one, once one is set)."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._provider = tracer_provider
        self._tracer: trace.Tracer | None = None
        # The API also builds the global provider from this variable, on first use.
        self._from_env = bool(os.environ.get("OTEL_PYTHON_TRACER_PROVIDER"))
        self.tracer  # noqa: B018 - resolved now if it can be

    @property
    def tracer(self) -> trace.Tracer | None:
        """Our tracer, or None while no real provider is set: the API's default provider only
        makes non-recording spans, and asking it for them costs as much as our whole bookkeeping.
        The global provider can be set once only, so once found it is kept."""
        tracer = self._tracer
        if tracer is None:
            provider = self._provider
            if provider is None:
                # `get_tracer_provider()` looks the environment up each time (a failed lookup
                # raises inside: a tenth of the rewrite's cost); the API's own global is read
                # first, and only while it exists as today (else the public call decides).
                if getattr(trace, "_TRACER_PROVIDER", _UNKNOWN) is None and not self._from_env:
                    return None
                provider = trace.get_tracer_provider()
                if isinstance(provider, trace.ProxyTracerProvider):
                    return None  # not set yet; maybe later, by the application
            if isinstance(provider, trace.NoOpTracerProvider):
                return None
            from .. import __name__ as package

            tracer = self._tracer = provider.get_tracer(package)
        return tracer

    def start_request(self, headers: list[tuple[bytes, bytes]]) -> tuple[Span, object] | None:
        """The span around one guarded request, made current; returns (span, token to detach),
        or None when no provider is set: nothing more to do. A span the sampler dropped is made
        current too, so that the upstream span follows the same decision.

        With no span current (no server instrumentation), an incoming `traceparent` is its
        parent, so a client's trace continues through the gateway.
        """
        tracer = self.tracer
        if tracer is None:
            return None
        parent = None
        # ASGI header names are lower-case. Looked for first: most requests carry none.
        for name, _ in headers:
            if name in _PROPAGATED:
                if not trace.get_current_span().get_span_context().is_valid:
                    parent = propagate.extract(_carrier(headers))
                break
        span = tracer.start_span("rewrite", context=parent, kind=SpanKind.INTERNAL)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        return span, token

    @staticmethod
    def end_request(
        span: Span,
        token: object,
        *,
        prompt: tuple[str, int, str | None] | None,
        outcome: str,
        cache: str | None,
        error: BaseException | None,
    ) -> None:
        otel_context.detach(token)  # type: ignore[arg-type]
        if not span.is_recording():  # sampled out: nothing to set, nothing to send
            return
        name, attributes = _request_end(prompt, outcome, cache)
        if name is not None:
            span.update_name(name)
        span.set_attributes(attributes)  # at once: the SDK locks and checks per call
        if error is not None:
            _record_error(span, error, outcome)
        span.end()

    def start_upstream(self, operation: str | None) -> Span | None:
        """The client span of one upstream call (named `{operation} {model}` once known), or
        None when no provider is set."""
        tracer = self.tracer
        if tracer is None:
            return None
        return tracer.start_span(operation or "upstream", kind=SpanKind.CLIENT)

    @staticmethod
    def inject(span: Span) -> list[tuple[bytes, bytes]]:
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in carrier.items()]

    @staticmethod
    def end_upstream(
        span: Span, attributes: Mapping[str, Any], error: BaseException | None, status: int | None
    ) -> None:
        span.set_attributes(attributes)
        if error is not None:
            _record_error(span, error, type(error).__name__)
        elif status is not None and status >= 400:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))
        span.end()


def _carrier(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in headers
        if name in _PROPAGATED
    }


def _record_error(span: Span, error: BaseException, kind: str) -> None:
    span.record_exception(error)
    span.set_attribute("error.type", kind)
    message = getattr(error, "message", None)
    span.set_status(Status(StatusCode.ERROR, message if isinstance(message, str) else None))


def otlp_tracer_provider(
    endpoint: str | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    service_name: str = "prompt-middleware",
) -> SDKTracerProvider:
    """A tracer provider that batches spans to an OTLP/HTTP endpoint (the `otel-export` extra).

    `endpoint` is the full traces URL, e.g. Langfuse's `https://cloud.langfuse.com/api/public/
    otel/v1/traces`; left out, the exporter reads the standard `OTEL_EXPORTER_OTLP_TRACES_
    ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` and `OTEL_EXPORTER_OTLP_HEADERS` variables.
    """
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise RuntimeError(
            "exporting spans needs the otel-export extra:"
            " pip install 'prompt-middleware[otel-export]'"
        ) from None
    exporter = OTLPSpanExporter(endpoint=endpoint, headers=dict(headers) if headers else None)
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
