"""The gateway's observability, from its `metrics` and `tracing` config (DESIGN §11).

`GatewayObservability(config)` checks, when the gateway is built, that the extras the config
needs are installed (a `ConfigError` naming the extra, not a failure at the first request). Each
worker process then switches observability on at lifespan startup (`start`: metrics, the access
log, spans exported over OTLP/HTTP when an endpoint is configured here or in the standard
`OTEL_EXPORTER_OTLP_*` variables) and off at shutdown (`stop`: the last spans are sent first).

`prepare_worker_metrics` sets up the directory prometheus_client's multi-process mode needs when
`server.workers > 1`: the operator's `PROMETHEUS_MULTIPROC_DIR`, or a temporary one.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
from pathlib import Path
from typing import Final

import httpx
import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import observability
from .config import ConfigError, GatewayConfig

__all__ = [
    "MULTIPROC_ENV",
    "GatewayObservability",
    "count_webhooks",
    "describe",
    "prepare_worker_metrics",
]

logger = logging.getLogger("prompt_middleware.gateway")

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"


class GatewayObservability:
    """What one gateway observes; see the module docstring."""

    def __init__(self, config: GatewayConfig) -> None:
        metrics = config.metrics
        tracing = config.tracing
        self.metrics_path = metrics.path if metrics is not None else None
        self.prompt_labels = metrics.prompt_labels if metrics is not None else False
        self.otlp_endpoint = tracing.otlp_endpoint if tracing is not None else None
        self._otlp_headers = dict(tracing.headers) if tracing is not None else {}
        self.exports = bool(
            self.otlp_endpoint or any(os.environ.get(name) for name in observability.OTLP_ENV)
        )
        if metrics is not None and not observability.metrics_available():
            raise ConfigError(
                f"{config.source}: metrics: needs the metrics extra: "
                "pip install 'prompt-middleware[metrics]'"
            )
        if self.exports and not _exporter_available():
            where = "tracing" if self.otlp_endpoint else "OTEL_EXPORTER_OTLP_ENDPOINT"
            raise ConfigError(
                f"{config.source}: {where}: exporting spans needs the otel-export extra: "
                "pip install 'prompt-middleware[otel-export]'"
            )
        self.metrics_app: ASGIApp | None = (
            observability.metrics_app() if metrics is not None else None
        )
        self._observer: observability.Observer | None = None

    def start(self) -> None:
        """Switch observability on in this process (at lifespan startup, in each worker)."""
        self._observer = observability.configure_gateway(
            prompt_labels=self.prompt_labels,
            otlp_endpoint=self.otlp_endpoint,
            otlp_headers=self._otlp_headers or None,
            metrics=self.metrics_path is not None,
            access_log=True,
        )

    async def stop(self) -> None:
        """Switch it off again, once the spans still queued are sent."""
        observer, self._observer = self._observer, None
        if observer is None:
            return
        if observability.active is observer:
            observability.disable()
        await observer.shutdown()


def describe(config: GatewayConfig) -> list[str]:
    """Parts of the startup line (never a header value: they hold credentials)."""
    parts = []
    if config.metrics is not None:
        labels = ", with prompt labels" if config.metrics.prompt_labels else ""
        parts.append(f"metrics: GET {config.metrics.path}{labels}")
    endpoint = config.tracing.otlp_endpoint if config.tracing is not None else None
    if endpoint:
        parts.append(f"tracing: OTLP/HTTP to {_shown_url(endpoint)}")
    elif any(os.environ.get(name) for name in observability.OTLP_ENV):
        parts.append("tracing: OTLP/HTTP to OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT")
    return parts


def prepare_worker_metrics(config: GatewayConfig) -> Path | None:
    """Before starting several workers with metrics: a directory they share for their series.

    The operator's `PROMETHEUS_MULTIPROC_DIR` is used (emptied of a previous run's files) when
    set; otherwise a temporary directory is made, and removed when this process exits. Either
    way it is in the environment before the workers start and before prometheus_client is
    imported (it picks its storage at import). None: nothing to prepare.
    """
    if config.metrics is None or config.server.workers < 2:
        return None
    given = os.environ.get(MULTIPROC_ENV)
    directory = observability.prepare_multiprocess(given or None)
    if not given:
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
    logger.debug("the workers' metrics are kept in %s", directory)
    return directory


# The webhook route's answers, by status: 200s say which in their body ({"status": ...}).
_WEBHOOK_OUTCOMES = {
    400: "invalid",
    401: "unauthorized",
    405: "method_not_allowed",
    413: "too_large",
}
_WEBHOOK_STATUSES = frozenset({"accepted", "ignored", "duplicate"})


def count_webhooks(app: ASGIApp) -> ASGIApp:
    """`app` (the webhook route) with each answer counted in
    `prompt_middleware_webhook_requests_total{outcome}`: accepted, ignored, duplicate,
    unauthorized (bad or stale signature), invalid, too_large, method_not_allowed."""

    async def counted(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        status = 0
        body = b""

        async def watched(message: Message) -> None:
            nonlocal status, body
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status == 200 and len(body) < 256:
                body += message.get("body", b"")
            await send(message)

        await app(scope, receive, watched)
        if status:
            observability.record_webhook(_webhook_outcome(status, body))

    return counted


def _webhook_outcome(status: int, body: bytes) -> str:
    if status == 200:
        try:
            said = orjson.loads(body).get("status")
        except (orjson.JSONDecodeError, AttributeError):
            said = None
        return said if said in _WEBHOOK_STATUSES else "ok"
    return _WEBHOOK_OUTCOMES.get(status, f"{status // 100}xx")


def _exporter_available() -> bool:
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        return False
    return True


def _shown_url(url: str) -> str:
    """`url` without credentials or query (Langfuse's keys never are in it, but others' may)."""
    try:
        return str(httpx.URL(url).copy_with(username=None, password=None, query=None))
    except (httpx.InvalidURL, ValueError):
        return "the configured endpoint"
