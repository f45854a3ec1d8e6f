"""Observability through the real CLI: `prompt-middleware serve --config FILE` as a subprocess.

`/metrics` after traffic (one worker and two), spans exported over OTLP/HTTP to the fake
Langfuse, an experiment from the config, the JSON access log, and the startup errors.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from prompt_middleware import observability
from prompt_middleware.gateway.app import build_app
from prompt_middleware.gateway.config import load_config
from prompt_middleware.registries.coherence.webhook import sign
from prompt_middleware.testing import CaptureApp, asgi_client

from .fake_langfuse import OTEL_TRACES_PATH, FakeLangfuse
from .fake_openai import INPUT_TOKENS, OUTPUT_TOKENS, FakeOpenAI
from .gateway_process import ROOT, Gateway, gateway_env, run_cli, serving, write_config
from .servers import free_port, running_server
from .test_observability_metrics import value

NAME = "support/triage"
KEY = "sk-gw-obs-0123456789"
OTLP_PUBLIC, OTLP_SECRET = "pk-lf-obs", "sk-lf-obs-secret"
REWRITES = "prompt_middleware_rewrites_total"


def _prompts(folder: Path) -> Path:
    """A prompt with a production (1) and a candidate (2) version."""
    directory = folder / "prompts"
    (directory / "support").mkdir(parents=True)
    versions = [
        {"type": "text", "version": 1, "labels": ["production"], "prompt": "v1 {{x}}"},
        {"type": "text", "version": 2, "labels": ["candidate"], "prompt": "v2 {{x}}"},
    ]
    (directory / "support" / "triage.json").write_text(json.dumps(versions))
    return directory


def _config(folder: Path, upstream: str, **sections: Any) -> Path:
    config = {
        "registry": {"files": str(_prompts(folder)), "preload": [NAME]},
        "upstreams": {"main": {"base_url": upstream + "/v1"}},
        "auth": {"keys": [KEY]},
        **sections,
    }
    return write_config(folder / "gateway.json", config)


def _post(gateway: Gateway, body: dict[str, Any], key: str | None = KEY) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    # A new connection each time, so that every worker may take some.
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers)


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with running_server(FakeOpenAI()) as url:
        yield url


# Metrics


def test_metrics_after_traffic(tmp_path: Path, upstream: str) -> None:
    config = _config(
        tmp_path, upstream, metrics={"path": "/internal/metrics"}, server={"log_format": "json"}
    )
    with serving("--config", str(config), wait_for="/health/ready") as gateway:
        for _ in range(3):
            assert _post(gateway, {"prompt_id": NAME, "prompt_variables": {"x": KEY}}).is_success
        for _ in range(2):
            assert _post(gateway, {"prompt_id": "nope"}).status_code == 404
        assert _post(gateway, {"model": "m", "messages": []}).is_success
        assert _post(gateway, {"prompt_id": NAME}, key=None).status_code == 401
        # No client key needed to scrape; the other methods stay behind the keys.
        scraped = httpx.get(gateway.url + "/internal/metrics")
        assert httpx.post(gateway.url + "/internal/metrics").status_code == 401
    assert scraped.status_code == 200
    text = scraped.text
    rewrites = "prompt_middleware_rewrites_total"
    assert value(text, rewrites, endpoint="chat_completions", outcome="rewritten") == 3
    assert value(text, rewrites, endpoint="chat_completions", outcome="prompt_not_found") == 2
    assert value(text, rewrites, endpoint="chat_completions", outcome="passed") == 1
    assert value(text, rewrites) == 6  # the refused request never reached the middleware
    lookups = "prompt_middleware_prompt_cache_lookups_total"
    # Preloaded at startup (one miss), then three hits; "nope": a miss, then a negative hit.
    assert value(text, lookups, result="hit") == 3
    assert value(text, lookups, result="miss") == 2
    assert value(text, lookups, result="negative_hit") == 1
    fetches = "prompt_middleware_prompt_fetch_duration_seconds_count"
    assert value(text, fetches, source="files", outcome="ok") == 1
    assert value(text, fetches, source="files", outcome="not_found") == 1
    durations = "prompt_middleware_upstream_request_duration_seconds_count"
    assert value(text, durations, upstream="127.0.0.1", status_class="2xx") == 4
    assert NAME not in text  # no prompt names without prompt_labels

    # The access log: one JSON line per request, never a key or a variable's value.
    assert gateway.process.returncode == 0
    lines = [json.loads(line) for line in gateway.log]
    every = [line for line in lines if line["logger"] == "prompt_middleware.access"]
    access = [line for line in every if line["path"] == "/v1/chat/completions"]
    assert len(access) == 7
    assert access[-1]["status"] == 401
    assert access[-1]["outcome"] == "invalid_api_key"
    metrics = [(line["method"], line["status"]) for line in every if "metrics" in line["path"]]
    assert metrics == [("GET", 200), ("POST", 401)]
    assert not [line for line in lines if line["logger"] == "uvicorn.access"]
    first = access[0]
    assert (first["status"], first["prompt"], first["version"]) == (200, NAME, 1)
    assert (first["label"], first["cache"], first["outcome"]) == ("production", "hit", "rewritten")
    assert isinstance(first["upstream_ms"], float)
    assert all(KEY not in line for line in gateway.log)


def test_one_access_line_per_request_in_text_mode(tmp_path: Path) -> None:
    """Every request the gateway answers gets one line, ours: the guarded ones, what it
    answers itself, the refused and the merely proxied; uvicorn's own access log is off."""
    capture = CaptureApp({"ok": True})
    with running_server(capture) as upstream:
        models = {"fast": {"model": "m"}}
        config = _config(tmp_path, upstream, models=models)
        with serving("--config", str(config), stdout=True) as gateway:
            headers = {"authorization": f"Bearer {KEY}"}
            url = gateway.url
            assert _post(gateway, {"prompt_id": NAME, "prompt_variables": {"x": "v"}}).is_success
            assert httpx.get(url + "/v1/models", headers=headers).status_code == 200
            assert httpx.get(url + "/v1/models").status_code == 401
            assert httpx.get(url + f"/v1/files?key={KEY}", headers=headers).status_code == 200
            probes_before = len(capture.requests)
    assert gateway.process.returncode == 0
    assert probes_before == 2
    access = [line for line in gateway.log if line.startswith("INFO:") and " outcome=" in line]
    assert not [line for line in gateway.log if '" 200' in line or "HTTP/1.1" in line], gateway.log
    seen = [line.split()[1:4] for line in access if "/health" not in line]
    assert seen == [
        ["POST", "/v1/chat/completions", "200"],
        ["GET", "/v1/models", "200"],
        ["GET", "/v1/models", "401"],
        ["GET", "/v1/files", "200"],
    ]
    chat, listed, refused, proxied = [line for line in access if "/health" not in line]
    assert f"prompt={NAME} version=1 label=production cache=hit outcome=rewritten" in chat
    assert "upstream=" in chat
    assert listed.endswith("outcome=local")
    assert refused.endswith("outcome=invalid_api_key")
    assert "outcome=passed upstream=" in proxied
    health = [line for line in access if "/health" in line]
    assert health
    assert all(line.split()[3] == "200" and "outcome=local" in line for line in health)
    assert all(KEY not in line for line in gateway.log)


def test_metrics_with_prompt_labels(tmp_path: Path, upstream: str) -> None:
    config = _config(tmp_path, upstream, metrics={"prompt_labels": True})
    with serving("--config", str(config), wait_for="/health/ready") as gateway:
        assert _post(gateway, {"prompt_id": NAME, "prompt_label": "candidate"}).is_success
        text = httpx.get(gateway.url + "/metrics").text
    labels = {"prompt": NAME, "version": "2", "label": "candidate"}
    assert value(text, "prompt_middleware_rewrites_total", outcome="rewritten", **labels) == 1
    durations = "prompt_middleware_upstream_request_duration_seconds_count"
    assert value(text, durations, status_class="2xx", **labels) == 1


def test_metrics_with_two_workers(tmp_path: Path, upstream: str) -> None:
    # No PROMETHEUS_MULTIPROC_DIR given: the gateway makes one (in TMPDIR) and removes it.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = gateway_env(TMPDIR=str(scratch))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    config = _config(tmp_path, upstream, metrics={}, server={"workers": 2})
    with serving("--config", str(config), env=env, wait_for="/health/ready") as gateway:
        (directory,) = scratch.glob("prompt-middleware-metrics-*")
        for _ in range(20):
            assert _post(gateway, {"prompt_id": NAME}).is_success
        # Whichever worker answers the scrape, it reports both.
        scrapes = [httpx.get(gateway.url + "/metrics").text for _ in range(4)]
        assert list(directory.glob("counter_*.db"))
    for text in scrapes:
        assert value(text, "prompt_middleware_rewrites_total", outcome="rewritten") == 20
        # One lookup per request and one per worker's readiness preload. A request is a hit,
        # unless it reached a worker before that worker's preload did (ready means one worker
        # answers): at most one such miss per worker.
        lookups = "prompt_middleware_prompt_cache_lookups_total"
        assert value(text, lookups) == 20 + 2
        assert value(text, lookups, result="hit") >= 20 - 2
        durations = "prompt_middleware_upstream_request_duration_seconds_count"
        assert value(text, durations, status_class="2xx") == 20
    assert not directory.exists()  # gone with the gateway
    assert gateway.process.returncode == 0, gateway.log


def test_an_operators_multiprocess_dir_is_used_and_kept(tmp_path: Path, upstream: str) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_1.db").write_bytes(b"")  # a previous run's: removed at startup
    env = gateway_env(PROMETHEUS_MULTIPROC_DIR=str(directory))
    config = _config(tmp_path, upstream, metrics={}, server={"workers": 2})
    with serving("--config", str(config), env=env, wait_for="/health/ready") as gateway:
        for _ in range(5):
            assert _post(gateway, {"prompt_id": NAME}).is_success
        text = httpx.get(gateway.url + "/metrics").text
    assert value(text, "prompt_middleware_rewrites_total", outcome="rewritten") == 5
    assert not (directory / "counter_1.db").exists()
    assert list(directory.glob("counter_*.db"))  # the operator's directory stays


def test_no_metrics_section_no_route(tmp_path: Path, upstream: str) -> None:
    with serving("--config", str(_config(tmp_path, upstream)), wait_for="/health/ready") as gw:
        assert httpx.get(gw.url + "/metrics").status_code == 401  # an ordinary, keyed request


# Spans to Langfuse


def _spans(fake: FakeLangfuse) -> dict[str, dict[str, Any]]:
    out = {}
    for export in fake.otel:
        request = ExportTraceServiceRequest()
        request.ParseFromString(export.body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    attributes = {}
                    for item in span.attributes:
                        attributes[item.key] = getattr(item.value, item.value.WhichOneof("value"))
                    out[span.name] = attributes
    return out


@pytest.mark.parametrize("where", ["config", "environment"])
def test_spans_reach_langfuse_linked_to_the_prompt(
    tmp_path: Path,
    upstream: str,
    served: tuple[FakeLangfuse, str],
    clean_fake: FakeLangfuse,
    where: str,
) -> None:
    _, langfuse = served
    clean_fake.project(OTLP_PUBLIC, OTLP_SECRET)
    auth = "Basic " + base64.b64encode(f"{OTLP_PUBLIC}:{OTLP_SECRET}".encode()).decode()
    env = gateway_env(LF_OTLP_AUTH=auth)
    if where == "config":
        tracing = {
            "otlp_endpoint": langfuse + OTEL_TRACES_PATH,
            "headers": {"Authorization": "os.environ/LF_OTLP_AUTH"},
        }
        config = _config(tmp_path, upstream, tracing=tracing)
    else:
        # The standard variables: /v1/traces is appended to the base endpoint.
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = langfuse + "/api/public/otel"
        env["OTEL_EXPORTER_OTLP_HEADERS"] = "Authorization=" + auth.replace(" ", "%20")
        config = _config(tmp_path, upstream)
    with serving("--config", str(config), env=env, wait_for="/health/ready") as gateway:
        body = {"model": "gpt-4o-mini", "prompt_id": NAME, "stream": True}
        response = _post(gateway, body)
        assert response.status_code == 200
        assert "[DONE]" in response.text
    # Stopping sent the spans still queued.
    assert gateway.process.returncode == 0, gateway.log
    assert {export.public_key for export in clean_fake.otel} == {OTLP_PUBLIC}
    spans = _spans(clean_fake)
    generation = spans["chat gpt-4o-mini"]
    assert generation["gen_ai.request.model"] == "gpt-4o-mini"
    assert generation["gen_ai.usage.input_tokens"] == INPUT_TOKENS
    assert generation["gen_ai.usage.output_tokens"] == OUTPUT_TOKENS
    assert generation["langfuse.observation.prompt.name"] == NAME
    assert generation["langfuse.observation.prompt.version"] == 1
    rewrite = spans[f"rewrite {NAME}"]
    assert rewrite["gen_ai.prompt.name"] == NAME
    assert rewrite["gen_ai.prompt.version"] == "1"
    assert rewrite["prompt_middleware.prompt.label"] == "production"
    log = "\n".join(gateway.log)
    assert OTLP_SECRET not in log
    assert auth.split()[1] not in log
    assert "tracing: OTLP/HTTP to" in log


# Experiments


def test_an_experiment_from_the_config(tmp_path: Path, upstream: str) -> None:
    experiments = {NAME: {"labels": {"production": 50, "candidate": 50}, "sticky": "user"}}
    config = _config(tmp_path, upstream, experiments=experiments)
    with serving("--config", str(config), wait_for="/health/ready") as gateway:
        seen: dict[str, str] = {}
        for index in range(40):
            response = _post(gateway, {"prompt_id": NAME, "user": f"user-{index}"})
            label = response.headers["x-prompt-label"]
            assert (
                response.headers["x-prompt-version"] == {"production": "1", "candidate": "2"}[label]
            )
            seen[f"user-{index}"] = label
        assert set(seen.values()) == {"production", "candidate"}
        for user in ("user-0", "user-1", "user-2"):  # sticky
            again = _post(gateway, {"prompt_id": NAME, "user": user})
            assert again.headers["x-prompt-label"] == seen[user]
        # An explicit label or version wins.
        for user, label in seen.items():
            other = "candidate" if label == "production" else "production"
            explicit = _post(gateway, {"prompt_id": NAME, "user": user, "prompt_label": other})
            assert explicit.headers["x-prompt-label"] == other
            pinned = _post(gateway, {"prompt_id": NAME, "user": user, "prompt_version": 1})
            assert pinned.headers["x-prompt-version"] == "1"
            assert "x-prompt-label" not in pinned.headers
            break


def test_an_experiment_label_without_a_prompt_keeps_the_gateway_unready(
    tmp_path: Path, upstream: str
) -> None:
    experiments = {NAME: {"labels": {"production": 90, "canary": 10}}}
    config = _config(tmp_path, upstream, experiments=experiments)
    with serving("--config", str(config)) as gateway:
        for _ in range(10):  # and it stays so: the check failed, and is retried
            assert httpx.get(gateway.url + "/health/ready").status_code == 503
            time.sleep(0.1)
    log = "\n".join(gateway.log)
    assert "'support/triage' label 'canary'" in log
    assert "'support/triage' label 'production'" not in log
    # Stopping while the check is retried is a clean stop.
    assert gateway.process.returncode == 0
    assert "Traceback" not in log


# Startup errors


BLOCK = """
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == {module!r}:
            raise ImportError(f"blocked: {{name}}")
        return None

sys.meta_path.insert(0, Block())
"""


@pytest.mark.parametrize(
    ("module", "section", "extra"),
    [
        ("prometheus_client", "metrics", "metrics"),
        ("opentelemetry", "tracing", "otel-export"),
    ],
)
def test_a_missing_extra_is_a_startup_error(
    tmp_path: Path, upstream: str, module: str, section: str, extra: str
) -> None:
    """As if the extra were not installed: `sitecustomize` hides the package."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK.format(module=module))
    sections: dict[str, Any] = {section: {}}
    if section == "tracing":
        sections[section] = {"otlp_endpoint": "http://127.0.0.1:9/v1/traces"}
    config = _config(tmp_path, upstream, **sections)
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    done = run_cli("serve", "--config", str(config), env=gateway_env(PYTHONPATH=path))
    assert done.returncode == 1
    assert f"pip install 'prompt-middleware[{extra}]'" in done.stderr
    assert f"{section}:" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_docs_gateway_config_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/observability.md's gateway sections are a valid config, meaning what it says."""
    text = (ROOT / "docs" / "observability.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S) if "log_format" in b]
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    monkeypatch.setenv("LANGFUSE_OTLP_AUTH", "Basic x")
    path = tmp_path / "gateway.yaml"
    path.write_text(f"registry: {{files: {prompts}}}\nupstreams: {{main: {{base_url: echo}}}}\n")
    path.write_text(path.read_text() + block)
    config = load_config(str(path))
    assert config.metrics is not None
    assert config.metrics.path == "/metrics"
    assert config.tracing is not None
    assert config.tracing.otlp_endpoint == "https://cloud.langfuse.com" + OTEL_TRACES_PATH
    experiment = config.experiments[NAME]
    assert experiment.labels == {"production": 90, "candidate": 10}
    assert (config.server.workers, config.server.log_format) == (2, "json")


@pytest.mark.anyio
async def test_the_app_switches_observability_on_for_its_lifespan(tmp_path: Path) -> None:
    """In-process (asyncio and trio): on at startup, off at shutdown, metrics without a key."""
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: the upstream answers 502
    app = build_app(load_config(str(_config(tmp_path, closed, metrics={}))))
    assert _active() is None
    passed = {"endpoint": "chat_completions", "outcome": "passed"}
    async with asgi_client(app) as client:
        observer = _active()
        assert observer is not None
        assert observer.metrics is not None
        assert observer.tracing is None  # no endpoint configured
        before = value((await client.get("/metrics")).text, REWRITES, **passed)
        headers = {"authorization": f"Bearer {KEY}"}
        body = {"model": "m", "messages": []}
        response = await client.post("/v1/chat/completions", json=body, headers=headers)
        assert response.status_code == 502
        after = value((await client.get("/metrics")).text, REWRITES, **passed)
    assert after - before == 1
    assert _active() is None


@pytest.mark.anyio
async def test_one_access_record_per_request_in_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In-process (asyncio and trio): each request one record, the guarded one with its
    prompt fields, a failed upstream call with its status and upstream time."""
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: the upstream answers 502
    app = build_app(load_config(str(_config(tmp_path, closed))))
    headers = {"authorization": f"Bearer {KEY}"}
    with caplog.at_level(logging.INFO, logger="prompt_middleware.access"):
        async with asgi_client(app) as client:
            caplog.clear()
            body = {"prompt_id": NAME, "prompt_variables": {"x": KEY}}
            assert (
                await client.post("/v1/chat/completions", json=body, headers=headers)
            ).status_code == 502
            assert (await client.get("/health")).status_code == 200
            assert (await client.get(f"/v1/files?key={KEY}")).status_code == 401
    fields = [
        r.access  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "prompt_middleware.access"
    ]
    assert [(f["method"], f["path"], f["status"], f["outcome"]) for f in fields] == [
        ("POST", "/v1/chat/completions", 502, "rewritten"),
        ("GET", "/health", 200, "local"),
        ("GET", "/v1/files", 401, "invalid_api_key"),
    ]
    first = fields[0]
    assert (first["prompt"], first["label"]) == (NAME, "production")
    assert first["cache"] in ("hit", "miss")  # the preload runs in the background
    assert isinstance(first["upstream_ms"], float)
    assert all(KEY not in r.getMessage() for r in caplog.records)


def _active() -> observability.Observer | None:
    return observability.active  # read anew each time (mypy would narrow the attribute)


@pytest.mark.anyio
async def test_webhook_outcomes_are_counted(tmp_path: Path) -> None:
    secret = "lf-whsec_" + "ab" * 32
    webhooks = {"langfuse": {"secrets": [secret]}}
    closed = f"http://127.0.0.1:{free_port()}"
    app = build_app(load_config(str(_config(tmp_path, closed, metrics={}, webhooks=webhooks))))
    event = {
        "id": "evt-1",
        "timestamp": "2026-12-07T10:00:00.000Z",
        "type": "prompt-version",
        "apiVersion": "v1",
        "action": "updated",
        "prompt": {"id": "p-1", "name": NAME, "version": 3, "projectId": "project-1"},
    }
    deliveries = [
        (json.dumps(event).encode(), True),  # accepted
        (json.dumps(event).encode(), True),  # the same id again: duplicate
        (json.dumps({**event, "id": "evt-2", "type": "trace-create"}).encode(), True),
        (b"[]", True),  # signed, not a delivery: invalid
        (json.dumps({**event, "id": "evt-3"}).encode(), False),  # unsigned: unauthorized
    ]
    outcomes = ("accepted", "duplicate", "ignored", "invalid", "unauthorized")
    webhooks_total = "prompt_middleware_webhook_requests_total"
    async with asgi_client(app) as client:
        text = (await client.get("/metrics")).text
        before = {outcome: value(text, webhooks_total, outcome=outcome) for outcome in outcomes}
        statuses = []
        for body, signed in deliveries:
            headers = {"x-langfuse-signature": sign(body, secret)} if signed else {}
            response = await client.post("/webhooks/langfuse", content=body, headers=headers)
            statuses.append(response.status_code)
        text = (await client.get("/metrics")).text
    assert statuses == [200, 200, 200, 400, 401]
    for outcome in outcomes:
        assert value(text, webhooks_total, outcome=outcome) - before[outcome] == 1, outcome
