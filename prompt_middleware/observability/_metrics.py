"""The Prometheus series of DESIGN §11, on a `prometheus_client` registry (the `metrics` extra)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder
from starlette.types import Receive, Scope, Send

__all__ = ["MULTIPROC_ENV", "Metrics", "MetricsApp", "prepare_multiprocess", "scrape_registry"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "prompt_middleware"
FETCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A completion can stream for minutes.
UPSTREAM_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
PROMPT_LABELS = ("prompt", "version", "label")
LOOKUP_RESULTS = ("hit", "stale", "miss", "negative_hit")


class Metrics:
    """Every series, registered on `registry`. With `prompt_labels`, rewrites and upstream
    durations also carry `{prompt, version, label}`."""

    def __init__(self, registry: CollectorRegistry, *, prompt_labels: bool = False) -> None:
        self.registry = registry
        self.prompt_labels = prompt_labels
        extra = PROMPT_LABELS if prompt_labels else ()
        self.rewrites = Counter(
            f"{PREFIX}_rewrites",
            "Requests the middleware guarded, by endpoint and outcome (rewritten, passed, or "
            "the error code).",
            ("endpoint", "outcome", *extra),
            registry=registry,
        )
        self.cache_lookups = Counter(
            f"{PREFIX}_prompt_cache_lookups",
            "Prompt cache lookups by result.",
            ("result",),
            registry=registry,
        )
        self.fetch_duration = Histogram(
            f"{PREFIX}_prompt_fetch_duration_seconds",
            "Registry calls made to fetch a prompt, by source and outcome.",
            ("source", "outcome"),
            buckets=FETCH_BUCKETS,
            registry=registry,
        )
        self.fetch_errors = Counter(
            f"{PREFIX}_prompt_fetch_errors",
            "Registry calls that failed, by source and reason.",
            ("source", "reason"),
            registry=registry,
        )
        self.invalidations = Counter(
            f"{PREFIX}_invalidations",
            "Prompt cache invalidations by origin.",
            ("origin",),
            registry=registry,
        )
        self.webhooks = Counter(
            f"{PREFIX}_webhook_requests",
            "Webhook deliveries by outcome.",
            ("outcome",),
            registry=registry,
        )
        self.upstream_duration = Histogram(
            f"{PREFIX}_upstream_request_duration_seconds",
            "Upstream calls from request to the response's last byte, by upstream and status "
            "class (error: no response).",
            ("upstream", "status_class", *extra),
            buckets=UPSTREAM_BUCKETS,
            registry=registry,
        )
        # Children by label values, remembered: `labels()` checks, joins and locks per call.
        # The lookup results are few and known: made now, so they show as 0 from the start.
        self.lookup_children = {
            result: self.cache_lookups.labels(result) for result in LOOKUP_RESULTS
        }
        self._rewrite_children: dict[tuple[str, ...], Any] = {}
        self._upstream_children: dict[tuple[str, ...], Any] = {}

    def rewrite(self, values: tuple[str, ...]) -> Any:
        """The rewrites counter for these label values."""
        found = self._rewrite_children.get(values)
        if found is None:
            found = self._rewrite_children[values] = self.rewrites.labels(*values)
        return found

    def upstream(self, values: tuple[str, ...]) -> Any:
        """The upstream duration histogram for these label values."""
        found = self._upstream_children.get(values)
        if found is None:
            found = self._upstream_children[values] = self.upstream_duration.labels(*values)
        return found

    def lookup(self, result: str) -> Any:
        """The cache lookups counter for `result`."""
        found = self.lookup_children.get(result)
        if found is None:
            found = self.lookup_children[result] = self.cache_lookups.labels(result)
        return found

    def unregister(self) -> None:
        for collector in (
            self.rewrites,
            self.cache_lookups,
            self.fetch_duration,
            self.fetch_errors,
            self.invalidations,
            self.webhooks,
            self.upstream_duration,
        ):
            self.registry.unregister(collector)


def prepare_multiprocess(directory: str | os.PathLike[str] | None = None) -> Path:
    """Point `PROMETHEUS_MULTIPROC_DIR` at an empty directory for worker processes to share.

    Call it in the parent before the workers start (the gateway does for `server.workers > 1`);
    each worker must import `prometheus_client` after it, which `enable()` does when called in
    the worker. Files a previous run left there are removed, so counters start at zero.
    """
    if directory is None:
        path = Path(tempfile.mkdtemp(prefix="prompt-middleware-metrics-"))
    else:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for child in path.iterdir():
            if child.suffix == ".db":
                child.unlink()
            elif child.is_dir():
                shutil.rmtree(child)
    os.environ[MULTIPROC_ENV] = str(path)
    return path


def scrape_registry(registry: CollectorRegistry) -> CollectorRegistry:
    """What a scrape should read: every process's files in multi-process mode, else `registry`."""
    if os.environ.get(MULTIPROC_ENV):
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return merged
    return registry


class MetricsApp:
    """An ASGI app answering `GET` (and `HEAD`) with the metrics in Prometheus's text format
    (OpenMetrics when the scraper asks for it). Mount it wherever `/metrics` should be."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            from .._asgi import answer_lifespan

            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _send(send, 405, b"text/plain; charset=utf-8", b"Method Not Allowed\n")
            return
        accept = ""
        for name, value in scope["headers"]:
            if name.lower() == b"accept":
                accept = value.decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        registry = scrape_registry(self.registry)
        # Reading the worker files is file I/O: off the event loop.
        body: bytes = await anyio.to_thread.run_sync(encoder, registry)
        await _send(
            send, 200, content_type.encode(), b"" if scope["method"] == "HEAD" else body, len(body)
        )


async def _send(
    send: Send, status: int, content_type: bytes, body: bytes, length: int | None = None
) -> None:
    headers: list[Any] = [
        (b"content-type", content_type),
        (b"content-length", str(len(body) if length is None else length).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
