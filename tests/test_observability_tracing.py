"""OpenTelemetry spans: the rewrite span, the upstream GenAI client span, traceparent upstream."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import SpanKind, StatusCode

from prompt_middleware import observability
from prompt_middleware.core.prompts import Prompt
from prompt_middleware.gateway.upstream import UpstreamProxy
from prompt_middleware.middleware import PromptMiddleware
from prompt_middleware.registries.memory import InMemoryRegistry
from prompt_middleware.testing import CaptureApp, asgi_client

from .fake_openai import INPUT_TOKENS, OUTPUT_TOKENS, RESPONSE_MODEL, FakeOpenAI, stream
from .servers import free_port, running_server

pytestmark = pytest.mark.anyio

NAME = "support/triage"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    observability.enable(metrics=False, tracing=True, tracer_provider=provider)
    try:
        yield exporter
    finally:
        observability.disable()
        provider.shutdown()


def _registry() -> InMemoryRegistry:
    return InMemoryRegistry(
        [
            Prompt(NAME, 1, "text", "old", labels=()),
            Prompt(NAME, 3, "text", "Triage {{ticket}}", labels=("production",)),
        ]
    )


async def _one(exporter: InMemorySpanExporter, kind: SpanKind) -> ReadableSpan:
    """The one finished span of `kind`; a server thread may end it just after answering."""
    deadline = time.monotonic() + 10
    while True:
        found = [span for span in exporter.get_finished_spans() if span.kind == kind]
        if found or time.monotonic() > deadline:
            break
        await anyio.sleep(0.01)
    assert len(found) == 1, found
    return found[0]


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_rewrite_span_links_the_prompt_version(spans: InMemorySpanExporter) -> None:
    app = PromptMiddleware(CaptureApp(), _registry())
    async with asgi_client(app) as client:
        for _ in range(2):
            response = await client.post(
                "/v1/chat/completions", json={"model": "m", "prompt_id": NAME}
            )
            assert response.status_code == 200
    first, second = spans.get_finished_spans()
    assert first.name == f"rewrite {NAME}"
    attributes = _attrs(first)
    assert attributes["gen_ai.prompt.name"] == NAME
    assert attributes["gen_ai.prompt.version"] == "3"
    assert attributes["langfuse.observation.prompt.name"] == NAME
    assert attributes["langfuse.observation.prompt.version"] == 3  # an integer, as Langfuse reads
    assert attributes["prompt_middleware.prompt.label"] == "production"
    assert attributes["prompt_middleware.outcome"] == "rewritten"
    assert attributes["prompt_middleware.cache.result"] == "miss"
    assert _attrs(second)["prompt_middleware.cache.result"] == "hit"
    assert first.status.status_code == StatusCode.UNSET


async def test_rewrite_span_by_version_has_no_label(spans: InMemorySpanExporter) -> None:
    app = PromptMiddleware(CaptureApp(), _registry(), cache_ttl=0)
    async with asgi_client(app) as client:
        await client.post("/v1/chat/completions", json={"prompt_id": NAME, "prompt_version": 1})
    (span,) = spans.get_finished_spans()
    assert _attrs(span)["langfuse.observation.prompt.version"] == 1
    assert "prompt_middleware.prompt.label" not in _attrs(span)
    assert "prompt_middleware.cache.result" not in _attrs(span)  # no cache


async def test_rewrite_error_is_recorded(spans: InMemorySpanExporter) -> None:
    app = PromptMiddleware(CaptureApp(), _registry())
    async with asgi_client(app) as client:
        response = await client.post("/v1/chat/completions", json={"prompt_id": "nope"})
    assert response.status_code == 404
    (span,) = spans.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    assert _attrs(span)["prompt_middleware.outcome"] == "prompt_not_found"
    assert _attrs(span)["error.type"] == "prompt_not_found"
    assert [event.name for event in span.events] == ["exception"]


async def test_experiment_label_is_on_the_span(spans: InMemorySpanExporter) -> None:
    registry = InMemoryRegistry(
        [
            Prompt(NAME, 1, "text", "a", labels=("production",)),
            Prompt(NAME, 2, "text", "b", labels=("candidate",)),
        ]
    )
    experiments = {NAME: {"labels": {"candidate": 1}}}
    app = PromptMiddleware(CaptureApp(), registry, experiments=experiments)
    async with asgi_client(app) as client:
        await client.post("/v1/chat/completions", json={"prompt_id": NAME, "user": "u"})
    (span,) = spans.get_finished_spans()
    assert _attrs(span)["prompt_middleware.prompt.label"] == "candidate"
    assert _attrs(span)["langfuse.observation.prompt.version"] == 2


# The upstream call, through real uvicorn servers


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    with running_server(fake) as url:
        yield fake, url


@pytest.fixture
def gateway(upstream: tuple[FakeOpenAI, str]) -> Iterator[tuple[FakeOpenAI, str]]:
    fake, url = upstream
    fake.seen.clear()
    app = PromptMiddleware(UpstreamProxy(url + "/v1"), _registry())
    with running_server(app) as gateway_url:
        yield fake, gateway_url


async def test_upstream_span_json(
    spans: InMemorySpanExporter, gateway: tuple[FakeOpenAI, str]
) -> None:
    fake, url = gateway
    async with httpx.AsyncClient(base_url=url) as client:
        body = {"model": "gpt-4o-mini", "prompt_id": NAME, "prompt_variables": {"ticket": "x"}}
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    client_span = await _one(spans, SpanKind.CLIENT)
    rewrite = await _one(spans, SpanKind.INTERNAL)
    attributes = _attrs(client_span)
    assert client_span.name == "chat gpt-4o-mini"
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert attributes["gen_ai.response.model"] == RESPONSE_MODEL
    assert attributes["gen_ai.usage.input_tokens"] == INPUT_TOKENS
    assert attributes["gen_ai.usage.output_tokens"] == OUTPUT_TOKENS
    assert attributes["langfuse.observation.prompt.name"] == NAME
    assert attributes["langfuse.observation.prompt.version"] == 3
    assert attributes["http.response.status_code"] == 200
    # One trace: the upstream call is the rewrite span's child...
    assert client_span.parent is not None
    assert client_span.parent.span_id == rewrite.context.span_id
    # ...and the upstream received the client span's context.
    (seen,) = fake.seen
    trace_id, span_id = seen.headers["traceparent"].split("-")[1:3]
    assert int(trace_id, 16) == client_span.context.trace_id
    assert int(span_id, 16) == client_span.context.span_id


async def test_client_traceparent_is_continued(
    spans: InMemorySpanExporter, gateway: tuple[FakeOpenAI, str]
) -> None:
    fake, url = gateway
    incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with httpx.AsyncClient(base_url=url) as client:
        await client.post(
            "/v1/chat/completions",
            json={"model": "m", "prompt_id": NAME},
            headers={"traceparent": incoming},
        )
    rewrite = await _one(spans, SpanKind.INTERNAL)
    assert rewrite.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert rewrite.parent is not None
    assert rewrite.parent.span_id == 0xB7AD6B7169203331
    forwarded = fake.seen[0].headers["traceparent"]
    assert forwarded != incoming
    assert forwarded.split("-")[1] == "0af7651916cd43dd8448eb211c80319c"


async def _stream(url: str, body: dict[str, Any]) -> bytes:
    async with (
        httpx.AsyncClient(base_url=url) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        return b"".join([chunk async for chunk in response.aiter_raw()])


async def test_stream_usage_asked_for_and_taken_back_out(
    spans: InMemorySpanExporter, gateway: tuple[FakeOpenAI, str]
) -> None:
    fake, url = gateway
    received = await _stream(url, {"model": "gpt-4o-mini", "prompt_id": NAME, "stream": True})
    # The upstream was asked for usage...
    assert fake.seen[0].body["stream_options"] == {"include_usage": True}
    # ...and the client got exactly the stream it would have got without asking.
    assert received == b"".join(stream(include_usage=False))
    attributes = _attrs(await _one(spans, SpanKind.CLIENT))
    assert attributes["gen_ai.usage.input_tokens"] == INPUT_TOKENS
    assert attributes["gen_ai.usage.output_tokens"] == OUTPUT_TOKENS
    assert attributes["gen_ai.response.model"] == RESPONSE_MODEL
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)


async def test_stream_with_the_clients_own_usage_option(
    spans: InMemorySpanExporter, gateway: tuple[FakeOpenAI, str]
) -> None:
    _fake, url = gateway
    body = {
        "model": "m",
        "prompt_id": NAME,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    received = await _stream(url, body)
    assert received == b"".join(stream(include_usage=True))
    assert _attrs(await _one(spans, SpanKind.CLIENT))["gen_ai.usage.output_tokens"] == OUTPUT_TOKENS


async def test_stream_with_usage_declined_is_left_alone(
    spans: InMemorySpanExporter, gateway: tuple[FakeOpenAI, str]
) -> None:
    fake, url = gateway
    body = {
        "model": "m",
        "prompt_id": NAME,
        "stream": True,
        "stream_options": {"include_usage": False},
    }
    received = await _stream(url, body)
    assert fake.seen[0].body["stream_options"] == {"include_usage": False}
    assert received == b"".join(stream(include_usage=False))
    assert "gen_ai.usage.input_tokens" not in _attrs(await _one(spans, SpanKind.CLIENT))


async def test_no_spans_and_nothing_added_while_disabled(
    upstream: tuple[FakeOpenAI, str],
) -> None:
    fake, url = upstream
    fake.seen.clear()
    app = PromptMiddleware(UpstreamProxy(url + "/v1"), _registry())
    with running_server(app) as gateway_url:
        received = await _stream(gateway_url, {"model": "m", "prompt_id": NAME, "stream": True})
    assert "stream_options" not in fake.seen[0].body
    assert "traceparent" not in fake.seen[0].headers
    assert received == b"".join(stream(include_usage=False))


async def test_upstream_failure_is_recorded(spans: InMemorySpanExporter) -> None:
    app = PromptMiddleware(UpstreamProxy(f"http://127.0.0.1:{free_port()}/v1"), _registry())
    async with asgi_client(app) as client:
        response = await client.post("/v1/chat/completions", json={"prompt_id": NAME})
    assert response.status_code == 502
    client_span = await _one(spans, SpanKind.CLIENT)
    assert client_span.status.status_code == StatusCode.ERROR
    assert _attrs(client_span)["error.type"] == "ConnectError"
    assert "http.response.status_code" not in _attrs(client_span)
    rewrite = await _one(spans, SpanKind.INTERNAL)
    assert _attrs(rewrite)["prompt_middleware.outcome"] == "rewritten"  # the rewrite itself did


GLOBAL_PROVIDER_LATER = """
import anyio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prompt_middleware import observability
from prompt_middleware.core.prompts import Prompt
from prompt_middleware.middleware import PromptMiddleware
from prompt_middleware.registries.memory import InMemoryRegistry
from prompt_middleware.testing import CaptureApp, asgi_client

observer = observability.enable(metrics=False, tracing=True, access_log=False)
capture = CaptureApp()
registry = InMemoryRegistry([Prompt("p", 1, "text", "hi", labels=("production",))])
app = PromptMiddleware(capture, registry)

async def call() -> None:
    async with asgi_client(app) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"prompt_id": "p"},
            headers={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
        )
        assert response.status_code == 200

anyio.run(call)  # no provider yet: no tracer, no span
print(observer.tracing.tracer is None)
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)  # as an application does at its startup, after enable()
anyio.run(call)
(span,) = exporter.get_finished_spans()
print(span.name, span.parent.trace_id == int("a" * 32, 16))
"""


def test_spans_once_the_application_sets_a_provider() -> None:
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run(
        [sys.executable, "-c", GLOBAL_PROVIDER_LATER],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["True", "rewrite p True"]


class _DropRewrites(Sampler):
    """Records every root span except the rewrite span."""

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        name = kwargs.get("name", args[2] if len(args) > 2 else "")
        decision = Decision.DROP if name == "rewrite" else Decision.RECORD_AND_SAMPLE
        return SamplingResult(decision)

    def get_description(self) -> str:
        return "drop rewrites"


async def test_a_sampled_out_request_records_no_upstream_span_either(
    upstream: tuple[FakeOpenAI, str],
) -> None:
    fake, url = upstream
    fake.seen.clear()
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(_DropRewrites()))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    observability.enable(metrics=False, tracing=True, tracer_provider=provider)
    try:
        app = PromptMiddleware(UpstreamProxy(url + "/v1"), _registry())
        async with asgi_client(app) as client:
            response = await client.post("/v1/chat/completions", json={"prompt_id": NAME})
            assert response.status_code == 200
    finally:
        observability.disable()
        provider.shutdown()
    # The upstream span is the dropped rewrite span's child: dropped with it, not a new root.
    assert exporter.get_finished_spans() == ()
    assert len(fake.seen) == 1
