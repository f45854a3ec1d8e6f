"""The gateway app in-process on asyncio and trio: keys, routing, readiness, watched files; and
`PromptMiddleware(authorize=...)`."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.types import Message, Scope

from prompt_middleware import InMemoryRegistry, Prompt, PromptMiddleware, PromptMiddlewareError
from prompt_middleware.core.errors import InvalidApiKey
from prompt_middleware.gateway.app import ClientKeys, GatewayApp, build_app
from prompt_middleware.gateway.config import load_config
from prompt_middleware.testing import CaptureApp, asgi_client

from .gateway_process import ROOT
from .helpers import SendLog, http_scope, openai_error

pytestmark = pytest.mark.anyio

KEY = "sk-gateway-key"


def _headers(*pairs: tuple[str, str]) -> Scope:
    return {"headers": [(k.encode(), v.encode()) for k, v in pairs]}


def test_client_keys() -> None:
    keys = ClientKeys([KEY, "second"])
    assert keys.allows(_headers(("authorization", f"Bearer {KEY}")))
    assert keys.allows(_headers(("authorization", "bearer second")))
    assert keys.allows(_headers(("api-key", KEY)))
    assert keys.allows(_headers(("x-api-key", "second")))
    assert keys.allows(_headers(("authorization", "Bearer wrong"), ("x-api-key", KEY)))
    for refused in (
        (),
        (("authorization", KEY),),  # not a bearer token
        (("authorization", f"Basic {KEY}"),),
        (("authorization", "Bearer "),),
        (("authorization", f"Bearer {KEY}x"),),
        (("x-other", KEY),),
    ):
        assert not keys.allows(_headers(*refused))
    assert KEY not in repr(keys)
    with pytest.raises(ValueError, match="at least one key"):
        ClientKeys([])


class CountingRegistry(InMemoryRegistry):
    def __init__(self, prompts: list[Prompt]) -> None:
        super().__init__(prompts)
        self.calls = 0

    async def get_prompt(
        self, name: str, *, version: int | None = None, label: str | None = None
    ) -> Prompt:
        self.calls += 1
        return await super().get_prompt(name, version=version, label=label)


async def test_authorize_runs_before_the_body_or_the_registry() -> None:
    registry = CountingRegistry(
        [Prompt(name="p", version=1, type="text", prompt="Hi", labels=("production",))]
    )
    seen: list[str] = []

    async def authorize(scope: Scope) -> None:
        seen.append(scope["path"])
        if (b"authorization", f"Bearer {KEY}".encode()) not in scope["headers"]:
            raise InvalidApiKey("Bad key.")

    app = PromptMiddleware(CaptureApp(), registry=registry, authorize=authorize)
    async with asgi_client(app) as client:
        body = {"model": "m", "prompt_id": "no-such-prompt"}
        refused = await client.post("/v1/chat/completions", json=body)
        other = await client.post("/v1/embeddings", json={"model": "m"})  # not the middleware's
        allowed = await client.post(
            "/v1/chat/completions",
            json={"model": "m", "prompt_id": "p"},
            headers={"authorization": f"Bearer {KEY}"},
        )
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert allowed.headers["x-prompt-name"] == "p"
    assert other.status_code == 404  # the echo's answer: passed on, unchecked
    assert registry.calls == 1
    assert seen == ["/v1/chat/completions", "/v1/chat/completions"]


async def test_authorize_failing_unexpectedly_is_a_500_without_details() -> None:
    async def authorize(scope: Scope) -> None:
        raise RuntimeError("secret detail")

    app = PromptMiddleware(CaptureApp(), registry=InMemoryRegistry([]), authorize=authorize)
    async with asgi_client(app) as client:
        response = await client.post("/v1/chat/completions", json={"model": "m"})
    assert response.status_code == 500
    assert "secret" not in response.text
    assert PromptMiddlewareError("x").code == response.json()["error"]["code"]


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    folder = tmp_path / "prompts"
    shutil.copytree(ROOT / "examples" / "prompts", folder)
    return folder


def _app(tmp_path: Path, config: dict[str, Any]) -> GatewayApp:
    path = tmp_path / "gateway.json"
    path.write_text(json.dumps(config))
    return build_app(load_config(str(path)))


@pytest.fixture
async def gateway(tmp_path: Path, prompts: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = _app(
        tmp_path,
        {
            "registry": {"files": str(prompts)},
            "upstreams": {"echo": {"base_url": "echo"}},
            "models": {
                "triage": {"model": "gpt-4o-mini", "prompt_id": "support/triage"},
                "plain": {"model": "gpt-4.1"},
            },
            "auth": {"keys": [KEY]},
            "server": {"max_body_size": 4096},
        },
    )
    async with asgi_client(app, headers={"authorization": f"Bearer {KEY}"}) as client:
        yield client


def _sent(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return json.loads(response.json()["choices"][0]["message"]["content"])


async def test_alias_with_the_clients_own_prompt(gateway: httpx.AsyncClient) -> None:
    """The client's prompt_id wins over the alias's prompt; the alias still names the model."""
    response = await gateway.post(
        "/v1/chat/completions",
        json={"model": "triage", "prompt_id": "greeting", "prompt_variables": {"name": "Ada"}},
    )
    sent = _sent(response)
    assert sent["model"] == "gpt-4o-mini"
    assert sent["messages"][0]["content"].startswith("Say hello to Ada")


async def test_alias_without_a_prompt_on_any_path(gateway: httpx.AsyncClient) -> None:
    sent = _sent(await gateway.post("/v1/chat/completions", json={"model": "plain"}))
    assert sent == {"model": "gpt-4.1"}
    # A mention of an alias elsewhere changes nothing.
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "plain triage"}]}
    assert _sent(await gateway.post("/v1/chat/completions", json=body)) == body


# Answered before the whole body is read: httpx's in-process transport leaves its body iterator
# to the garbage collector, which trio reports.
@pytest.mark.filterwarnings(
    "ignore:Async generator 'httpx._content.ByteStream.__aiter__':ResourceWarning",
    "ignore:Exception ignored in. <async_generator object ByteStream:"
    "pytest.PytestUnraisableExceptionWarning",
)
async def test_routing_errors(gateway: httpx.AsyncClient) -> None:
    big = {"model": "plain", "messages": [{"role": "user", "content": "x" * 5000}]}
    too_large = await gateway.post("/v1/chat/completions", json=big)
    assert too_large.status_code == 413
    assert too_large.json()["error"]["code"] == "request_too_large"
    repeated = b'{"model": "plain", "model": "triage"}'
    response = await gateway.post("/v1/chat/completions", content=repeated)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"


async def test_models_list_is_answered_and_health_needs_no_key(
    gateway: httpx.AsyncClient,
) -> None:
    models = (await gateway.get("/v1/models")).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["triage", "plain"]
    assert (await gateway.get("/models/plain")).json()["id"] == "plain"
    anonymous = {"authorization": ""}
    assert (await gateway.get("/v1/models", headers=anonymous)).status_code == 401
    assert (await gateway.get("/health", headers=anonymous)).json() == {"status": "ok"}


async def test_models_forwarded_without_aliases(tmp_path: Path, prompts: Path) -> None:
    app = _app(
        tmp_path,
        {"registry": {"files": str(prompts)}, "upstreams": {"echo": {"base_url": "echo"}}},
    )
    async with asgi_client(app) as client:
        models = (await client.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["echo"]


async def test_ready_once_preloaded_prompts_are_cached(tmp_path: Path, prompts: Path) -> None:
    app = _app(
        tmp_path,
        {
            # Not watched, so only the readiness check reads the new file.
            "registry": {"files": str(prompts), "preload": ["greeting", "later"], "watch": False},
            "cache": {"negative_ttl": 0},
            "upstreams": {"echo": {"base_url": "echo"}},
        },
    )
    async with asgi_client(app) as client:
        assert (await client.get("/health")).status_code == 200
        waiting = await client.get("/health/ready")
        assert waiting.status_code == 503
        assert "later" not in waiting.text  # no prompt names for anonymous callers
        await anyio.Path(prompts / "later.txt").write_text("Later\n")
        with anyio.fail_after(20):
            while (await client.get("/health/ready")).status_code != 200:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        cache = app.middleware._cache
        assert cache is not None
        before = cache.stats.misses
        response = await client.post(
            "/v1/chat/completions", json={"model": "m", "prompt_id": "later"}
        )
        assert response.status_code == 200
        assert cache.stats.misses == before  # preloaded: a cache hit


async def test_watched_files_beat_a_long_ttl(tmp_path: Path, prompts: Path) -> None:
    app = _app(
        tmp_path,
        {
            "registry": {"files": str(prompts)},
            "cache": {"ttl": 3600},
            "upstreams": {"echo": {"base_url": "echo"}},
        },
    )

    async def content(client: httpx.AsyncClient) -> str:
        response = await client.post(
            "/v1/chat/completions", json={"model": "m", "prompt_id": "greeting"}
        )
        text: str = _sent(response)["messages"][0]["content"]
        return text

    async with asgi_client(app) as client:
        assert (await content(client)).startswith("Say hello")
        await anyio.sleep(0.3)  # the watcher's first scan
        await anyio.Path(prompts / "greeting.txt").write_text("Edited\n")
        with anyio.fail_after(20):
            while await content(client) != "Edited":  # noqa: ASYNC110
                await anyio.sleep(0.05)


@pytest.mark.parametrize("routed", [False, True], ids=["middleware-reads", "gateway-routes"])
async def test_server_body_timeout_takes_effect(
    tmp_path: Path, prompts: Path, routed: bool
) -> None:
    """A body that stops coming is a 408 after `server.body_timeout`, whichever layer reads it
    (with aliases to route, the gateway reads the body before the middleware)."""
    config: dict[str, Any] = {
        "registry": {"files": str(prompts)},
        "upstreams": {"echo": {"base_url": "echo"}},
        "server": {"body_timeout": 0.3},
    }
    if routed:
        config["models"] = {"plain": {"model": "gpt-4.1"}}
    app = _app(tmp_path, config)
    first = [b'{"model": "plain", "prompt_id": "greeting"']

    async def receive() -> Message:
        if first:
            return {"type": "http.request", "body": first.pop(), "more_body": True}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    send = SendLog()
    with anyio.fail_after(10):  # a bound on the test only: the default would be 30 s
        await app(http_scope(), receive, send)
    error = openai_error(send, 408, "request_timeout")
    assert "0.3 seconds" in error["message"]
