"""Prometheus series after real traffic: in one process, and in several sharing a directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import ASGIApp, Receive, Scope, Send

from prompt_middleware import observability
from prompt_middleware.core.errors import RegistryUnavailable
from prompt_middleware.core.prompts import Prompt
from prompt_middleware.gateway.upstream import UpstreamProxy
from prompt_middleware.middleware import PromptMiddleware
from prompt_middleware.registries.cache import CachedRegistry
from prompt_middleware.registries.memory import InMemoryRegistry
from prompt_middleware.testing import CaptureApp, asgi_client

from .fake_openai import FakeOpenAI
from .servers import free_port, running_server

pytestmark = pytest.mark.anyio

NAME = "support/triage"
ROOT = Path(__file__).resolve().parent.parent


def value(text: str, sample: str, **labels: str) -> float:
    """The sum of `sample` over series whose labels include `labels` (0 if none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == sample and all(found.labels.get(k) == v for k, v in labels.items()):
                total += found.value
    return total


def _registry() -> InMemoryRegistry:
    return InMemoryRegistry([Prompt(NAME, 3, "text", "hi {{x}}", labels=("production",))])


def _with_metrics(app: ASGIApp, registry: CollectorRegistry) -> ASGIApp:
    metrics = observability.metrics_app(registry)

    async def routed(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics":
            await metrics(scope, receive, send)
        else:
            await app(scope, receive, send)

    return routed


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    registry = CollectorRegistry()
    observability.enable(metrics=True, tracing=False, registry=registry)
    try:
        yield registry
    finally:
        observability.disable()


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with running_server(FakeOpenAI()) as url:
        yield url


async def test_series_after_traffic(registry: CollectorRegistry, upstream: str) -> None:
    proxy = UpstreamProxy(upstream + "/v1")
    app = _with_metrics(PromptMiddleware(proxy, _registry()), registry)
    with running_server(app) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            for _ in range(3):
                ok = await client.post("/v1/chat/completions", json={"prompt_id": NAME})
                assert ok.status_code == 200
            for _ in range(2):
                missing = await client.post("/v1/chat/completions", json={"prompt_id": "nope"})
                assert missing.status_code == 404
            plain = await client.post("/v1/chat/completions", json={"model": "m", "messages": []})
            assert plain.status_code == 200
            bad = await client.post("/v1/responses", json={"prompt_id": 5})
            assert bad.status_code == 400
            scraped = await client.get("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    text = scraped.text

    rewrites = "prompt_middleware_rewrites_total"
    assert value(text, rewrites, endpoint="chat_completions", outcome="rewritten") == 3
    assert value(text, rewrites, endpoint="chat_completions", outcome="prompt_not_found") == 2
    assert value(text, rewrites, endpoint="chat_completions", outcome="passed") == 1
    assert value(text, rewrites, endpoint="responses", outcome="invalid_prompt_request") == 1
    assert NAME not in text  # no prompt names without prompt_labels

    lookups = "prompt_middleware_prompt_cache_lookups_total"
    assert value(text, lookups, result="miss") == 2
    assert value(text, lookups, result="hit") == 2
    assert value(text, lookups, result="negative_hit") == 1

    fetches = "prompt_middleware_prompt_fetch_duration_seconds_count"
    assert value(text, fetches, source="memory", outcome="ok") == 1
    assert value(text, fetches, source="memory", outcome="not_found") == 1

    upstream_count = "prompt_middleware_upstream_request_duration_seconds_count"
    assert value(text, upstream_count, upstream="127.0.0.1", status_class="2xx") == 4


async def test_prompt_labels(upstream: str) -> None:
    registry = CollectorRegistry()
    observability.enable(metrics=True, tracing=False, registry=registry, prompt_labels=True)
    try:
        app = _with_metrics(PromptMiddleware(UpstreamProxy(upstream), _registry()), registry)
        async with asgi_client(app) as client:
            await client.post("/v1/chat/completions", json={"prompt_id": NAME})
            text = (await client.get("/metrics")).text
    finally:
        observability.disable()
    labels = {"prompt": NAME, "version": "3", "label": "production"}
    assert value(text, "prompt_middleware_rewrites_total", outcome="rewritten", **labels) == 1
    upstream_count = "prompt_middleware_upstream_request_duration_seconds_count"
    assert value(text, upstream_count, status_class="2xx", **labels) == 1


class _Failing:
    async def get_prompt(
        self, name: str, *, version: int | None = None, label: str | None = None
    ) -> Prompt:
        raise RegistryUnavailable("down")


class _Slow:
    source = "slowpoke"

    async def get_prompt(
        self, name: str, *, version: int | None = None, label: str | None = None
    ) -> Prompt:
        await anyio.sleep(5)
        raise AssertionError("not reached")


async def test_fetch_errors_invalidations_webhooks(registry: CollectorRegistry) -> None:
    failing = PromptMiddleware(CaptureApp(), CachedRegistry(_Failing(), negative_ttl=0))
    slow = PromptMiddleware(CaptureApp(), CachedRegistry(_Slow(), fetch_timeout=0.05))
    async with asgi_client(failing) as client:
        response = await client.post("/v1/chat/completions", json={"prompt_id": NAME})
        assert response.status_code == 503
    async with asgi_client(slow) as client:
        response = await client.post("/v1/chat/completions", json={"prompt_id": NAME})
        assert response.status_code == 503
    cache = CachedRegistry(_registry())
    cache.invalidate()
    cache.invalidate(NAME, origin="webhook")
    observability.record_webhook("accepted")
    observability.record_webhook("unauthorized")
    async with asgi_client(observability.metrics_app(registry)) as client:
        text = (await client.get("/metrics")).text
    errors = "prompt_middleware_prompt_fetch_errors_total"
    assert value(text, errors, source="_failing", reason="unavailable") == 1
    assert value(text, errors, source="slowpoke", reason="timeout") == 1
    durations = "prompt_middleware_prompt_fetch_duration_seconds_count"
    assert value(text, durations, source="slowpoke", outcome="error") == 1
    invalidations = "prompt_middleware_invalidations_total"
    assert value(text, invalidations, origin="api") == 1
    assert value(text, invalidations, origin="webhook") == 1
    webhooks = "prompt_middleware_webhook_requests_total"
    assert value(text, webhooks, outcome="accepted") == 1
    assert value(text, webhooks, outcome="unauthorized") == 1


async def test_metrics_app_answers_only_get(registry: CollectorRegistry) -> None:
    async with asgi_client(observability.metrics_app(registry)) as client:
        assert (await client.post("/metrics")).status_code == 405
        head = await client.head("/metrics")
        assert head.status_code == 200
        assert head.content == b""
        openmetrics = await client.get(
            "/metrics", headers={"accept": "application/openmetrics-text"}
        )
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")


def test_disabled_records_nothing() -> None:
    registry = CollectorRegistry()
    observability.enable(metrics=True, tracing=False, registry=registry)
    observability.disable()
    cache = CachedRegistry(_registry())
    cache.invalidate()
    observability.record_webhook("accepted")
    text = _scrape(registry)
    assert value(text, "prompt_middleware_invalidations_total") == 0
    assert value(text, "prompt_middleware_webhook_requests_total") == 0


def _scrape(registry: CollectorRegistry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


# Several processes


RECORD = """
import anyio
from prompt_middleware import observability
from prompt_middleware.core.prompts import Prompt
from prompt_middleware.middleware import PromptMiddleware
from prompt_middleware.registries.memory import InMemoryRegistry
from prompt_middleware.testing import CaptureApp, asgi_client

observability.enable(metrics=True, tracing=False, access_log=False)
registry = InMemoryRegistry([Prompt("p", 1, "text", "hi", labels=("production",))])

async def main() -> None:
    async with asgi_client(PromptMiddleware(CaptureApp(), registry)) as client:
        for _ in range(COUNT):
            await client.post("/v1/chat/completions", json={"prompt_id": "p"})

anyio.run(main)
"""


def _env(directory: Path) -> dict[str, str]:
    return {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}


async def test_two_processes_share_a_multiprocess_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Set through monkeypatch first, so that what prepare_multiprocess sets is undone after.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    directory = observability.prepare_multiprocess(tmp_path / "metrics")
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(directory)
    for count in (3, 4):
        await anyio.run_process(
            [sys.executable, "-c", RECORD.replace("COUNT", str(count))],
            env=_env(directory),
            cwd=ROOT,
        )
    async with asgi_client(observability.metrics_app(CollectorRegistry())) as client:
        text = (await client.get("/metrics")).text
    assert value(text, "prompt_middleware_rewrites_total", outcome="rewritten") == 7
    assert value(text, "prompt_middleware_prompt_cache_lookups_total", result="miss") == 2
    assert value(text, "prompt_middleware_prompt_cache_lookups_total", result="hit") == 5
    # A fresh directory starts from zero: files of a previous run are removed.
    observability.prepare_multiprocess(directory)
    assert not list(directory.glob("*.db"))


def test_uvicorn_with_two_workers(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "tests.observability_app:app",
            "--workers",
            "2",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=_env(directory),
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/metrics").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "uvicorn did not start"
            assert server.poll() is None, "uvicorn exited"
            time.sleep(0.1)
        for _ in range(20):  # a new connection each time, so both workers may take some
            response = httpx.post(base + "/v1/chat/completions", json={"prompt_id": NAME})
            assert response.status_code == 200
        text = httpx.get(base + "/metrics").text
    finally:
        server.terminate()
        server.wait(30)
    assert value(text, "prompt_middleware_rewrites_total", outcome="rewritten") == 20
    hits = value(text, "prompt_middleware_prompt_cache_lookups_total", result="hit")
    misses = value(text, "prompt_middleware_prompt_cache_lookups_total", result="miss")
    assert hits + misses == 20
    # Each worker process that served requests writes its own file; the scrape merged them.
    pids = {path.stem.rsplit("_", 1)[-1] for path in directory.glob("counter_*.db")}
    assert 1 <= len(pids) <= 2
    assert misses == len(pids)  # one cache per worker, one miss each


async def test_upstream_failure_has_status_class_error(registry: CollectorRegistry) -> None:
    proxy = UpstreamProxy(f"http://127.0.0.1:{free_port()}")
    app = _with_metrics(PromptMiddleware(proxy, _registry()), registry)
    async with asgi_client(app) as client:
        response = await client.post("/v1/chat/completions", json={"prompt_id": NAME})
        assert response.status_code == 502
        text = (await client.get("/metrics")).text
    upstream_count = "prompt_middleware_upstream_request_duration_seconds_count"
    assert value(text, upstream_count, upstream="127.0.0.1", status_class="error") == 1
