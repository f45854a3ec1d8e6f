"""OTLP/HTTP export to (a fake) Langfuse, and the access log."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from prompt_middleware import observability
from prompt_middleware.core.prompts import Prompt
from prompt_middleware.gateway.upstream import UpstreamProxy
from prompt_middleware.middleware import PromptMiddleware
from prompt_middleware.observability.access import ACCESS_LOGGER, JsonFormatter
from prompt_middleware.registries.memory import InMemoryRegistry
from prompt_middleware.testing import CaptureApp, asgi_client

from .fake_langfuse import OTEL_TRACES_PATH, FakeLangfuse
from .fake_openai import INPUT_TOKENS, OUTPUT_TOKENS, FakeOpenAI
from .servers import running_server

pytestmark = pytest.mark.anyio

NAME = "support/triage"


def _registry() -> InMemoryRegistry:
    return InMemoryRegistry([Prompt(NAME, 4, "text", "hi", labels=("production",))])


def _attributes(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in span.attributes:
        kind = item.value.WhichOneof("value")
        out[item.key] = getattr(item.value, kind)
    return out


async def test_spans_reach_langfuse_linked_to_the_prompt(
    served: tuple[FakeLangfuse, str], clean_fake: FakeLangfuse
) -> None:
    _, url = served
    clean_fake.project("pk-lf-1", "sk-lf-1")
    auth = base64.b64encode(b"pk-lf-1:sk-lf-1").decode()
    provider = observability.otlp_tracer_provider(
        url + OTEL_TRACES_PATH, {"Authorization": f"Basic {auth}"}
    )
    observability.enable(metrics=False, tracing=True, tracer_provider=provider)
    try:
        app = PromptMiddleware(CaptureApp(), _registry())
        async with asgi_client(app) as client:
            response = await client.post("/v1/chat/completions", json={"prompt_id": NAME})
            assert response.status_code == 200
    finally:
        observability.disable()
        assert provider.force_flush(10_000)
        provider.shutdown()
    (export,) = clean_fake.otel
    assert export.public_key == "pk-lf-1"
    assert export.content_type == "application/x-protobuf"
    request = ExportTraceServiceRequest()
    request.ParseFromString(export.body)
    (resource,) = request.resource_spans
    service = {a.key: a.value.string_value for a in resource.resource.attributes}
    assert service["service.name"] == "prompt-middleware"
    (span,) = [s for scope in resource.scope_spans for s in scope.spans]
    attributes = _attributes(span)
    assert attributes["langfuse.observation.prompt.name"] == NAME
    assert attributes["langfuse.observation.prompt.version"] == 4  # int_value
    assert attributes["gen_ai.prompt.name"] == NAME
    assert attributes["gen_ai.prompt.version"] == "4"


async def test_gateway_setup_sends_each_call_as_a_linked_generation(
    served: tuple[FakeLangfuse, str], clean_fake: FakeLangfuse
) -> None:
    _, url = served
    clean_fake.project("pk-lf-2", "sk-lf-2")
    endpoint, headers = observability.langfuse_otlp(url + "/", "pk-lf-2", "sk-lf-2")
    assert endpoint == url + OTEL_TRACES_PATH
    observer = observability.configure_gateway(otlp_endpoint=endpoint, otlp_headers=headers)
    assert observer.metrics is not None
    assert observer.tracing is not None
    try:
        with running_server(FakeOpenAI()) as upstream:
            app = PromptMiddleware(UpstreamProxy(upstream + "/v1"), _registry())
            async with asgi_client(app) as client:
                body = {"model": "gpt-4o-mini", "prompt_id": NAME, "stream": True}
                response = await client.post("/v1/chat/completions", json=body)
                assert response.status_code == 200
    finally:
        observability.disable()
        await observer.shutdown()
    spans = []
    for export in clean_fake.otel:
        request = ExportTraceServiceRequest()
        request.ParseFromString(export.body)
        spans += [s for r in request.resource_spans for scope in r.scope_spans for s in scope.spans]
    by_name = {span.name: _attributes(span) for span in spans}
    generation = by_name["chat gpt-4o-mini"]
    assert generation["gen_ai.request.model"] == "gpt-4o-mini"
    assert generation["gen_ai.usage.input_tokens"] == INPUT_TOKENS
    assert generation["gen_ai.usage.output_tokens"] == OUTPUT_TOKENS
    assert generation["langfuse.observation.prompt.name"] == NAME
    assert generation["langfuse.observation.prompt.version"] == 4
    assert by_name[f"rewrite {NAME}"]["prompt_middleware.outcome"] == "rewritten"


async def test_wrong_keys_are_refused_by_the_fake(
    served: tuple[FakeLangfuse, str], clean_fake: FakeLangfuse
) -> None:
    _, url = served
    provider = observability.otlp_tracer_provider(
        url + OTEL_TRACES_PATH, {"Authorization": "Basic " + base64.b64encode(b"x:y").decode()}
    )
    observability.enable(metrics=False, tracing=True, tracer_provider=provider)
    try:
        async with asgi_client(PromptMiddleware(CaptureApp(), _registry())) as client:
            await client.post("/v1/chat/completions", json={"prompt_id": NAME})
    finally:
        observability.disable()
        provider.force_flush(10_000)
        provider.shutdown()
    assert clean_fake.otel == []


# The access log


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def access() -> Iterator[_Lines]:
    handler = _Lines()
    ACCESS_LOGGER.addHandler(handler)
    level = ACCESS_LOGGER.level
    ACCESS_LOGGER.setLevel(logging.INFO)
    observability.enable(metrics=False, tracing=False)
    try:
        yield handler
    finally:
        observability.disable()
        ACCESS_LOGGER.removeHandler(handler)
        ACCESS_LOGGER.setLevel(level)


async def test_access_log_line_per_guarded_request(access: _Lines) -> None:
    secret = "sk-do-not-log-me"
    app = PromptMiddleware(CaptureApp(), _registry())
    async with asgi_client(app) as client:
        await client.post(
            "/v1/chat/completions?api-key=" + secret,
            json={"prompt_id": NAME, "prompt_variables": {"x": secret}},
            headers={"authorization": f"Bearer {secret}"},
        )
        await client.post("/v1/chat/completions", json={"prompt_id": "nope"})
        await client.get("/v1/models")  # not guarded: no line
    assert len(access.lines) == 2
    first, second = (json.loads(line) for line in access.lines)
    assert first["logger"] == "prompt_middleware.access"
    assert first["method"] == "POST"
    assert first["path"] == "/v1/chat/completions"
    assert first["status"] == 200
    assert first["prompt"] == NAME
    assert first["version"] == 4
    assert first["label"] == "production"
    assert first["cache"] == "miss"
    assert first["outcome"] == "rewritten"
    assert isinstance(first["duration_ms"], float)
    assert first["upstream_ms"] is None  # CaptureApp is no UpstreamProxy
    assert second["status"] == 404
    assert second["outcome"] == "prompt_not_found"
    assert second["prompt"] is None
    assert all(secret not in line for line in access.lines)


async def test_access_log_has_the_upstream_latency(access: _Lines) -> None:
    with running_server(FakeOpenAI()) as upstream:
        app = PromptMiddleware(UpstreamProxy(upstream), _registry())
        async with asgi_client(app) as client:
            response = await client.post("/v1/chat/completions", json={"prompt_id": NAME})
    assert response.status_code == 200
    (line,) = (json.loads(line) for line in access.lines)
    assert isinstance(line["upstream_ms"], float)
    assert 0 < line["upstream_ms"] <= line["duration_ms"]


def test_json_formatter_on_any_record() -> None:
    record = logging.LogRecord("prompt_middleware.access", logging.INFO, "", 0, "x", (), None)
    formatted = json.loads(JsonFormatter().format(record))
    assert formatted["message"] == "x"
    assert formatted["level"] == "info"
    assert formatted["time"].endswith("Z")
