"""`prompt-middleware serve --config FILE` as a real subprocess: the gateway a platform team runs.

One gateway process serves the module's tests (files registry, two recording upstreams, client
keys, model aliases); the worker and shutdown tests start their own.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from prompt_middleware.testing import CaptureApp

from .gateway_process import ROOT, Gateway, SlowStream, gateway_env, serving
from .servers import running_server

GATEWAY_KEY = "sk-gw-test-0123456789"
MAIN_KEY = "sk-main-upstream"
OTHER_KEY = "sk-other-upstream"

CONFIG = """\
# The gateway's own format, in YAML.
registry:
  files: prompts
  preload: [greeting]
cache: {{ttl: 3600}}             # longer than any test: file changes must not wait for it
rewrite: {{text_role: user}}
upstreams:
  main: {{base_url: "{main}/v1", api_key: os.environ/MAIN_KEY}}
  other:
    base_url: "{other}/v1"
    api_key: {other_key}
    timeout: {{connect: 5, read: 30}}
models:
  triage: {{model: gpt-4o-mini, prompt_id: support/triage}}
  fast: {{model: gpt-4.1-nano, upstream: other}}
  greeter: {{model: gpt-4o, upstream: other, prompt_id: greeting}}
auth:
  keys: [os.environ/GATEWAY_KEY, sk-second-key]
server: {{host: 127.0.0.1, graceful_timeout: 10}}
metrics: {{path: /metrics}}
"""


class Setup:
    def __init__(self, gateway: Gateway, main: CaptureApp, other: CaptureApp, prompts: Path):
        self.gateway = gateway
        self.main = main
        self.other = other
        self.prompts = prompts

    @property
    def url(self) -> str:
        return self.gateway.url

    def client(self, key: str = GATEWAY_KEY) -> openai.OpenAI:
        return openai.OpenAI(api_key=key, base_url=self.url + "/v1", max_retries=0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("gateway")
    prompts = folder / "prompts"
    shutil.copytree(ROOT / "examples" / "prompts", prompts)
    main, other = CaptureApp(), CaptureApp()
    with running_server(main) as main_url, running_server(other) as other_url:
        config = folder / "gateway.yaml"
        config.write_text(CONFIG.format(main=main_url, other=other_url, other_key=OTHER_KEY))
        env = gateway_env(MAIN_KEY=MAIN_KEY, GATEWAY_KEY=GATEWAY_KEY)
        with serving("--config", str(config), env=env, wait_for="/health/ready") as gateway:
            yield Setup(gateway, main, other, prompts)
        assert gateway.process.returncode == 0, gateway.log
        log = "\n".join(gateway.log)
        assert "Traceback" not in log
        assert any("metrics: GET /metrics" in line for line in gateway.log)
        for secret in (GATEWAY_KEY, MAIN_KEY, OTHER_KEY, "sk-second-key"):
            assert secret not in log


def test_no_key_or_wrong_key_is_401_before_any_prompt_lookup(setup: Setup) -> None:
    before = len(setup.main.requests) + len(setup.other.requests)
    body = {"model": "m", "messages": [], "prompt_id": "no/such/prompt"}
    for headers in ({}, {"authorization": "Bearer wrong"}, {"x-api-key": "wrong"}):
        response = httpx.post(setup.url + "/v1/chat/completions", json=body, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert response.json()["error"]["type"] == "invalid_request_error"
    with setup.client("wrong") as client, pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="triage", messages=[])
    with setup.client("wrong") as client, pytest.raises(openai.AuthenticationError):
        client.models.list()
    assert len(setup.main.requests) + len(setup.other.requests) == before


def test_good_key_alias_bound_to_a_prompt(setup: Setup) -> None:
    with setup.client() as client:
        raw = client.chat.completions.with_raw_response.create(
            model="triage",
            messages=[{"role": "user", "content": "charged twice"}],
            extra_body={"prompt_variables": {"product": "Acme"}},
        )
    assert raw.headers["x-prompt-name"] == "support/triage"
    received = setup.main.last
    assert received.json["model"] == "gpt-4o-mini"
    assert received.messages[0]["content"].startswith("You triage support tickets for Acme.")
    # The client's key stays here; the upstream's own goes on.
    assert received.headers.getlist("authorization") == [f"Bearer {MAIN_KEY}"]


def test_aliases_on_another_upstream(setup: Setup) -> None:
    with setup.client() as client:
        client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
        fast = setup.other.last
        client.chat.completions.create(
            model="greeter", messages=[], extra_body={"prompt_variables": {"name": "Ada"}}
        )
        greeter = setup.other.last
        client.chat.completions.create(model="gpt-4.1", messages=[])  # no alias: default, as sent
        plain = setup.main.last
    assert fast.json == {"model": "gpt-4.1-nano", "messages": [{"role": "user", "content": "hi"}]}
    assert fast.headers.getlist("authorization") == [f"Bearer {OTHER_KEY}"]
    assert greeter.json["model"] == "gpt-4o"
    assert greeter.messages[0]["content"].startswith("Say hello to Ada")
    assert plain.json["model"] == "gpt-4.1"


def test_other_client_key_headers(setup: Setup) -> None:
    body = {"model": "fast", "messages": []}
    for header in ("x-api-key", "api-key"):
        response = httpx.post(
            setup.url + "/v1/chat/completions", json=body, headers={header: "sk-second-key"}
        )
        assert response.status_code == 200
        received = setup.other.last
        assert header not in received.headers
        assert received.headers["authorization"] == f"Bearer {OTHER_KEY}"


def test_models_health_and_ready(setup: Setup) -> None:
    with setup.client() as client:
        models = client.models.list()
        one = client.models.retrieve("fast")
    assert [m.id for m in models.data] == ["triage", "fast", "greeter"]
    assert one.id == "fast"
    for path in ("/health", "/health/ready"):
        response = httpx.get(setup.url + path)  # no key needed
        assert response.status_code == 200
    assert not any(r.path.startswith("/health") for r in setup.main.requests)


def test_prompt_files_reload_without_restart(setup: Setup) -> None:
    greeting = setup.prompts / "greeting.txt"
    fresh = setup.prompts / "fresh" / "new.md"

    def sent(prompt_id: str) -> str | int:
        response = httpx.post(
            setup.url + "/v1/chat/completions",
            json={"model": "m", "messages": [], "prompt_id": prompt_id},
            headers={"authorization": f"Bearer {GATEWAY_KEY}"},
        )
        if response.status_code != 200:
            return response.status_code
        content: str = setup.main.last.messages[0]["content"]
        return content

    assert str(sent("greeting")).startswith("Say hello")
    assert sent("fresh/new") == 404  # remembered as not found, too
    greeting.write_text("Changed greeting\n")
    fresh.parent.mkdir()
    fresh.write_text("A new prompt\n")
    assert _eventually(lambda: sent("greeting") == "Changed greeting")
    assert _eventually(lambda: sent("fresh/new") == "A new prompt")
    fresh.unlink()
    assert _eventually(lambda: sent("fresh/new") == 404)


def _eventually(check: object, limit: float = 15.0) -> bool:
    """Whether `check()` holds within `limit` seconds (a bound for a stuck test, not a timing)."""
    assert callable(check)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_serve_and_sigterm_finishes_the_stream(workers: int, tmp_path: Path) -> None:
    slow = SlowStream(chunks=10, interval=0.1)
    config = {
        "registry": {"files": str(ROOT / "examples" / "prompts")},
        "upstreams": {"echo": {"base_url": "echo"}, "slow": {"base_url": "{slow}/v1"}},
        "models": {"slow-model": {"model": "m", "upstream": "slow"}},
        "auth": {"keys": [GATEWAY_KEY]},
        "server": {"workers": workers, "graceful_timeout": 20},
    }
    with running_server(slow) as slow_url:
        config["upstreams"]["slow"]["base_url"] = slow_url + "/v1"  # type: ignore[index]
        path = tmp_path / "gateway.json"
        path.write_text(json.dumps(config))
        with serving("--config", str(path)) as gateway:
            with openai.OpenAI(
                api_key=GATEWAY_KEY, base_url=gateway.url + "/v1", max_retries=0
            ) as client:
                for index in range(50):
                    completion = client.chat.completions.create(
                        model="m",
                        messages=[],
                        extra_body={"prompt_id": "greeting", "prompt_variables": {"name": index}},
                    )
                    sent = json.loads(completion.choices[0].message.content or "")
                    assert sent["messages"][0]["content"].startswith(f"Say hello to {index} ")
                stream = client.chat.completions.create(
                    model="slow-model", messages=[], stream=True
                )
                pieces = []
                stopping = None
                for chunk in stream:
                    pieces.append(chunk.choices[0].delta.content)
                    if stopping is None:  # the stream is under way: ask the gateway to stop
                        stopping = threading.Thread(target=gateway.stop, args=(signal.SIGTERM,))
                        stopping.start()
            assert stopping is not None
            stopping.join(30)
            assert gateway.process.returncode == 0, gateway.log
    assert pieces == [f"{i} " for i in range(10)]
    assert slow.started == 1
    log = "\n".join(gateway.log)
    assert len(set(re.findall(r"Started server process \[(\d+)\]", log))) == workers
    assert GATEWAY_KEY not in log
    assert "Traceback" not in log
    startup = [line for line in gateway.log if "listening on" in line]
    assert len(startup) == 1
    if workers > 1:
        assert f"({workers} workers)" in startup[0]
    assert "auth: 1 client key" in startup[0]
