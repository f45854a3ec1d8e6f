from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from prompt_middleware.core.errors import (
    InvalidPrompt,
    InvalidPromptRequest,
    PromptNotFound,
    RegistryAuthError,
    RegistryUnavailable,
)
from prompt_middleware.core.prompts import Prompt
from prompt_middleware.registries.langfuse import LangfuseRegistry
from prompt_middleware.registries.tenants import LangfuseTenants

from .fake_langfuse import FakeLangfuse, running_fake
from .servers import free_port

PK, SK = "pk-lf-alpha", "sk-lf-alpha-SECRET-0123456789"
PK_B, SK_B = "pk-lf-beta", "sk-lf-beta-SECRET-9876543210"
CHAT = [
    {"role": "system", "content": "You are {{persona}}."},
    {"type": "placeholder", "name": "history"},
    {"role": "user", "content": "{{question}}"},
]
LANGFUSE_ENV = ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_BASE_URL", "LANGFUSE_HOST")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Proxy variables would reroute loopback traffic; Langfuse variables would leak into defaults.
    for name in (*LANGFUSE_ENV, "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def fake(clean_fake: FakeLangfuse) -> FakeLangfuse:
    return clean_fake


@pytest.fixture(scope="module")
def other_served() -> Iterator[tuple[FakeLangfuse, str]]:
    """A second Langfuse, on another port: a host the tenant pool must not reach by default."""
    fake = FakeLangfuse()
    with running_fake(fake) as url:
        yield fake, url


@pytest.fixture
def other(other_served: tuple[FakeLangfuse, str]) -> FakeLangfuse:
    other_served[0].reset()
    return other_served[0]


@pytest.fixture
def other_url(other_served: tuple[FakeLangfuse, str], other: FakeLangfuse) -> str:
    return other_served[1]


@pytest.fixture
def url(served: tuple[FakeLangfuse, str], fake: FakeLangfuse) -> str:
    return served[1]


def registry_for(url: str, **kwargs: Any) -> LangfuseRegistry:
    kwargs.setdefault("retry_base_delay", 0.001)
    kwargs.setdefault("retry_max_delay", 0.01)
    return LangfuseRegistry(
        kwargs.pop("public_key", PK), kwargs.pop("secret_key", SK), **kwargs, base_url=url
    )


def basic(public_key: str, secret_key: str) -> str:
    return base64.b64encode(f"{public_key}:{secret_key}".encode()).decode()


class TestFetch:
    pytestmark = pytest.mark.anyio

    async def test_label_version_and_default_production(self, fake: FakeLangfuse, url: str) -> None:
        fake.add_prompt(PK, SK, "greet", "Hello v1")
        fake.add_prompt(PK, SK, "greet", "Hello v2", labels=["staging"])
        async with registry_for(url) as registry:
            default = await registry.get_prompt("greet")
            staging = await registry.get_prompt("greet", label="staging")
            latest = await registry.get_prompt("greet", label="latest")
            first = await registry.get_prompt("greet", version=1)

        assert (default.version, default.prompt, default.labels) == (1, "Hello v1", ("production",))
        assert (staging.version, staging.prompt) == (2, "Hello v2")
        assert staging.labels == ("staging", "latest")
        assert latest.version == 2
        assert first == default
        assert [r.query_string for r in fake.requests] == [
            "",
            "label=staging",
            "label=latest",
            "version=1",
        ]
        assert {r.raw_path for r in fake.requests} == {"/api/public/v2/prompts/greet"}
        assert {r.method for r in fake.requests} == {"GET"}
        assert {r.authorization for r in fake.requests} == {f"Basic {basic(PK, SK)}"}

    async def test_folder_name_is_one_path_segment(self, fake: FakeLangfuse, url: str) -> None:
        fake.add_prompt(PK, SK, "team/support bot", "Hi from the folder")
        fake.add_prompt(PK, SK, "team", "not me")
        async with registry_for(url) as registry:
            prompt = await registry.get_prompt("team/support bot")
        assert (prompt.name, prompt.prompt) == ("team/support bot", "Hi from the folder")
        assert fake.requests[0].raw_path == "/api/public/v2/prompts/team%2Fsupport%20bot"

    async def test_text_prompt_with_config(self, fake: FakeLangfuse, url: str) -> None:
        config = {"model": "gpt-4o-mini", "temperature": 0.2}
        fake.add_prompt(PK, SK, "summary", "Summarise {{text}}", config=config, tags=["t1"])
        async with registry_for(url) as registry:
            prompt = await registry.get_prompt("summary")
        assert prompt == Prompt(
            name="summary",
            version=1,
            type="text",
            prompt="Summarise {{text}}",
            config=config,
            labels=("production", "latest"),
            tags=("t1",),
        )

    async def test_chat_prompt_with_placeholder_and_null_config(
        self, fake: FakeLangfuse, url: str
    ) -> None:
        body = fake.add_prompt(PK, SK, "agent", CHAT, config=None)
        assert body["config"] is None
        assert body["prompt"][0]["type"] == "chatmessage"
        async with registry_for(url) as registry:
            prompt = await registry.get_prompt("agent")
        assert prompt.type == "chat"
        assert prompt.config == {}
        assert prompt.prompt == (
            {"role": "system", "content": "You are {{persona}}."},
            {"type": "placeholder", "name": "history"},
            {"role": "user", "content": "{{question}}"},
        )
        messages = prompt.compile(
            {"persona": "kind", "question": "Why?"},
            {"history": [{"role": "assistant", "content": "Hi"}]},
        )
        assert [m["content"] for m in messages] == ["You are kind.", "Hi", "Why?"]

    async def test_version_and_label_together_rejected_without_a_request(
        self, fake: FakeLangfuse, url: str
    ) -> None:
        async with registry_for(url) as registry:
            with pytest.raises(InvalidPromptRequest) as info:
                await registry.get_prompt("greet", version=1, label="staging")
            with pytest.raises(InvalidPromptRequest):
                await registry.get_prompt("")
        assert info.value.param == "prompt_label"
        assert fake.request_count == 0

    async def test_fake_rejects_version_and_label_together(
        self, fake: FakeLangfuse, url: str
    ) -> None:
        fake.project(PK, SK)
        async with httpx.AsyncClient() as client:
            response = await client.get(
                f"{url}/api/public/v2/prompts/x?version=1&label=production",
                headers={"authorization": f"Basic {basic(PK, SK)}"},
            )
        assert response.status_code == 400
        assert set(response.json()) == {"message", "error"}


class TestErrors:
    pytestmark = pytest.mark.anyio

    @pytest.mark.parametrize(
        ("kwargs", "described"),
        [
            ({}, "label 'production'"),
            ({"label": "beta"}, "label 'beta'"),
            ({"version": 7}, "version 7"),
        ],
    )
    async def test_404_is_not_found_without_retry(
        self, fake: FakeLangfuse, url: str, kwargs: dict[str, Any], described: str
    ) -> None:
        fake.add_prompt(PK, SK, "exists", "x")
        async with registry_for(url, max_retries=3) as registry:
            with pytest.raises(PromptNotFound) as info:
                await registry.get_prompt("missing", **kwargs)
        assert fake.request_count == 1
        assert info.value.param == "prompt_id"
        assert "'missing'" in info.value.message
        assert described in info.value.message

    @pytest.mark.parametrize("status", [500, 502, 503, 504])
    async def test_5xx_retried_then_unavailable(
        self, fake: FakeLangfuse, url: str, status: int
    ) -> None:
        fake.add_prompt(PK, SK, "p", "x")
        fake.fail_next(10, status)
        async with registry_for(url, max_retries=2) as registry:
            with pytest.raises(RegistryUnavailable) as info:
                await registry.get_prompt("p")
        assert type(info.value) is RegistryUnavailable
        assert fake.request_count == 3
        assert f"HTTP {status}" in info.value.message
        assert "3 attempts" in info.value.message

    async def test_transient_5xx_then_success(self, fake: FakeLangfuse, url: str) -> None:
        fake.add_prompt(PK, SK, "p", "x")
        fake.fail_next(2, 500)
        async with registry_for(url, max_retries=2) as registry:
            prompt = await registry.get_prompt("p")
        assert prompt.prompt == "x"
        assert fake.request_count == 3

    async def test_no_retries_when_max_retries_is_zero(self, fake: FakeLangfuse, url: str) -> None:
        fake.fail_next(5, 503)
        async with registry_for(url, max_retries=0) as registry:
            with pytest.raises(RegistryUnavailable):
                await registry.get_prompt("p")
        assert fake.request_count == 1

    async def test_retry_after_replaces_backoff(self, fake: FakeLangfuse, url: str) -> None:
        fake.add_prompt(PK, SK, "p", "x")
        fake.fail_next(1, 429, headers={"retry-after": "0"})
        # A huge backoff that Retry-After: 0 must override.
        registry = registry_for(url, retry_base_delay=30.0, retry_max_delay=30.0)
        start = time.monotonic()
        async with registry:
            assert (await registry.get_prompt("p")).prompt == "x"
        assert time.monotonic() - start < 5
        assert fake.request_count == 2

    async def test_retry_after_is_capped(self, fake: FakeLangfuse, url: str) -> None:
        fake.add_prompt(PK, SK, "p", "x")
        fake.fail_next(1, 503, headers={"retry-after": "3600"})
        start = time.monotonic()
        async with registry_for(url, retry_max_delay=0.05) as registry:
            assert (await registry.get_prompt("p")).prompt == "x"
        assert time.monotonic() - start < 5

    async def test_429_exhausted_is_unavailable(self, fake: FakeLangfuse, url: str) -> None:
        fake.fail_next(
            3,
            429,
            headers={"retry-after": "0"},
            body={"message": "slow down", "error": "TooManyRequests"},
        )
        async with registry_for(url, max_retries=2) as registry:
            with pytest.raises(RegistryUnavailable) as info:
                await registry.get_prompt("p")
        assert "HTTP 429 TooManyRequests" in info.value.message
        assert "slow down" not in info.value.message
        assert fake.request_count == 3

    async def test_wrong_keys_are_an_auth_error_not_a_miss(
        self, fake: FakeLangfuse, url: str
    ) -> None:
        fake.add_prompt(PK, SK, "p", "x")
        async with registry_for(url, secret_key="sk-wrong", max_retries=3) as registry:
            with pytest.raises(RegistryAuthError) as info:
                await registry.get_prompt("p")
        assert not isinstance(info.value, PromptNotFound)
        assert "401" in info.value.message
        assert "sk-wrong" not in info.value.message
        assert fake.request_count == 1

    async def test_403_is_an_auth_error(self, fake: FakeLangfuse, url: str) -> None:
        fake.fail_next(1, 403, body={"message": "Forbidden", "error": "AccessDeniedError"})
        async with registry_for(url) as registry:
            with pytest.raises(RegistryAuthError, match="403 AccessDeniedError"):
                await registry.get_prompt("p")
        assert fake.request_count == 1

    @pytest.mark.parametrize("status", [400, 405, 422, 302])
    async def test_other_statuses_unavailable_without_retry(
        self, fake: FakeLangfuse, url: str, status: int
    ) -> None:
        fake.fail_next(1, status, headers={"location": "http://elsewhere.invalid/"})
        async with registry_for(url, max_retries=2) as registry:
            with pytest.raises(RegistryUnavailable, match=f"HTTP {status}"):
                await registry.get_prompt("p")
        assert fake.request_count == 1

    async def test_timeout_is_unavailable(self, fake: FakeLangfuse, url: str) -> None:
        fake.add_prompt(PK, SK, "p", "x")
        fake.delay = 30.0
        start = time.monotonic()
        async with registry_for(url, timeout=0.2, max_retries=1) as registry:
            with pytest.raises(RegistryUnavailable, match="Timeout"):
                await registry.get_prompt("p")
        assert time.monotonic() - start < 5
        assert fake.request_count == 2

    async def test_connection_refused_is_unavailable(self) -> None:
        registry = registry_for(f"http://127.0.0.1:{free_port()}", max_retries=1)
        async with registry:
            with pytest.raises(RegistryUnavailable, match="ConnectError after 2 attempts"):
                await registry.get_prompt("p")

    @pytest.mark.parametrize(
        "body",
        [
            b"<html>bad gateway</html>",
            b"[]",
            {"name": "p", "version": 1, "type": "text"},
            {"name": "p", "version": "1", "type": "text", "prompt": "x", "config": None},
            {"name": "p", "version": 1, "type": "image", "prompt": "x", "config": None},
            {"name": "p", "version": 1, "type": "chat", "prompt": "not a list", "config": None},
            {
                "name": "p",
                "version": 1,
                "type": "chat",
                "prompt": [{"role": "user"}],
                "config": None,
            },
            {"name": "p", "version": 1, "type": "text", "prompt": "x", "config": [1]},
        ],
    )
    async def test_malformed_prompt_is_invalid_prompt(
        self, fake: FakeLangfuse, url: str, body: Any
    ) -> None:
        fake.fail_next(1, 200, body=body)
        async with registry_for(url) as registry:
            with pytest.raises(InvalidPrompt):
                await registry.get_prompt("p")
        assert fake.request_count == 1

    async def test_secrets_never_in_messages_or_logs(
        self, fake: FakeLangfuse, url: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        fake.add_prompt(PK, SK, "p", "x")
        messages = []
        async with registry_for(url) as registry:
            await registry.get_prompt("p")
            fake.fail_next(3, 503)
            with pytest.raises(RegistryUnavailable) as unavailable:
                await registry.get_prompt("p")
            messages.append(str(unavailable.value))
            fake.fail_next(1, 500, body={"error": f"Basic {basic(PK, SK)}", "message": SK})
            fake.fail_next(1, 401, body={"error": SK, "message": SK})
            with pytest.raises(RegistryAuthError) as denied:
                await registry.get_prompt("p")
            messages.append(str(denied.value))
            messages.append(repr(registry))
        retries = [r for r in caplog.records if r.name == "prompt_middleware.langfuse"]
        assert any("HTTP 503" in r.getMessage() for r in retries)
        assert any(r.levelno == logging.WARNING for r in retries)
        assert any(r.name.startswith("httpcore") for r in caplog.records)
        for text in (caplog.text, *messages):
            assert SK not in text
            assert basic(PK, SK) not in text


class TestConfiguration:
    def test_env_keys(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-env")
        monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-env-SECRET")
        registry = LangfuseRegistry()
        assert registry.base_url == "https://cloud.langfuse.com"
        assert "pk-env" in repr(registry)
        assert "sk-env-SECRET" not in repr(registry)
        assert "sk-env-SECRET" not in repr(vars(registry))

    @pytest.mark.parametrize(
        ("base_url", "base_env", "host", "host_env", "expected"),
        [
            (
                "https://arg.example",
                "https://env.example",
                "https://host.example",
                "https://hostenv.example",
                "https://arg.example",
            ),
            (
                None,
                "https://env.example",
                "https://host.example",
                "https://hostenv.example",
                "https://env.example",
            ),
            (None, None, "https://host.example", "https://hostenv.example", "https://host.example"),
            (None, None, None, "https://hostenv.example", "https://hostenv.example"),
            (None, None, None, None, "https://cloud.langfuse.com"),
            (None, "", "", "", "https://cloud.langfuse.com"),
            ("http://LocalHost:3000/langfuse/", None, None, None, "http://localhost:3000/langfuse"),
        ],
    )
    def test_base_url_order(
        self,
        monkeypatch: pytest.MonkeyPatch,
        *,
        base_url: str | None,
        base_env: str | None,
        host: str | None,
        host_env: str | None,
        expected: str,
    ) -> None:
        if base_env is not None:
            monkeypatch.setenv("LANGFUSE_BASE_URL", base_env)
        if host_env is not None:
            monkeypatch.setenv("LANGFUSE_HOST", host_env)
        registry = LangfuseRegistry(PK, SK, host, base_url=base_url)
        assert registry.base_url == expected

    @pytest.mark.parametrize(
        ("public_key", "secret_key", "named"),
        [
            (None, SK, "LANGFUSE_PUBLIC_KEY"),
            (PK, None, "LANGFUSE_SECRET_KEY"),
            ("", "", "LANGFUSE_PUBLIC_KEY"),
        ],
    )
    def test_missing_keys(self, public_key: str | None, secret_key: str | None, named: str) -> None:
        with pytest.raises(ValueError, match=named) as info:
            LangfuseRegistry(public_key, secret_key)
        assert SK not in str(info.value)

    @pytest.mark.parametrize(
        "bad",
        [
            "ftp://host",
            "https://user:pass@host",
            "https://host?x=1",
            "https://host/#f",
            "host:3000",
            "https://",
        ],
    )
    def test_bad_base_url(self, bad: str) -> None:
        with pytest.raises(ValueError, match="base URL") as info:
            LangfuseRegistry(PK, SK, base_url=bad)
        assert "pass" not in str(info.value)

    @pytest.mark.parametrize(
        "kwargs", [{"timeout": 0}, {"max_retries": -1}, {"retry_base_delay": -1.0}]
    )
    def test_bad_numbers(self, kwargs: dict[str, Any]) -> None:
        with pytest.raises(ValueError, match=r"timeout|max_retries|delays"):
            LangfuseRegistry(PK, SK, **kwargs)

    def test_import_does_not_load_the_sdk(self) -> None:
        import subprocess
        import sys

        code = (
            "import sys\n"
            "sys.modules['langfuse'] = None  # as if not installed: importing it raises\n"
            "import prompt_middleware\n"
            "from prompt_middleware.registries.langfuse import LangfuseRegistry\n"
            "LangfuseRegistry('pk', 'sk')\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True)


class TestClientLifecycle:
    pytestmark = pytest.mark.anyio

    async def test_aclose_closes_own_client(self, fake: FakeLangfuse, url: str) -> None:
        fake.add_prompt(PK, SK, "p", "x")
        registry = registry_for(url)
        await registry.get_prompt("p")
        own = registry._http()
        await registry.aclose()
        assert own.is_closed
        # A closed registry reopens on demand (e.g. a second lifespan of the same app).
        assert (await registry.get_prompt("p")).prompt == "x"
        await registry.aclose()

    async def test_given_client_is_left_open(self, fake: FakeLangfuse, url: str) -> None:
        fake.add_prompt(PK, SK, "p", "x")
        async with httpx.AsyncClient(headers={"x-other": "1"}) as client:
            async with registry_for(url, client=client) as registry:
                await registry.get_prompt("p")
            assert not client.is_closed
            assert (await registry.get_prompt("p")).prompt == "x"

    async def test_no_cookies_kept(self, fake: FakeLangfuse, url: str) -> None:
        fake.add_prompt(PK, SK, "p", "x")
        fake.fail_next(1, 503, headers={"set-cookie": "session=abc; Path=/"})
        async with registry_for(url) as registry:
            await registry.get_prompt("p")
            await registry.get_prompt("p")
        assert fake.request_count == 3
        assert all("cookie" not in r.headers for r in fake.requests)


class TestTenants:
    pytestmark = pytest.mark.anyio

    async def test_same_name_two_projects(self, fake: FakeLangfuse, url: str) -> None:
        fake.add_prompt(PK, SK, "shared", "from A")
        fake.add_prompt(PK_B, SK_B, "shared", "from B")
        async with registry_for(url, public_key="pk-base", secret_key="sk-base") as base:
            tenants = LangfuseTenants(base)
            key_a, reg_a = tenants.resolve(PK, SK)
            key_b, reg_b = tenants.resolve(PK_B, SK_B, url)
            assert key_a != key_b
            assert (await reg_a.get_prompt("shared")).prompt == "from A"
            assert (await reg_b.get_prompt("shared")).prompt == "from B"
            assert tenants.resolve(PK, SK) == (key_a, reg_a)
            assert reg_a._http() is base._http()
            await tenants.aclose()
            assert len(tenants) == 0

    async def test_wrong_secret_never_reuses_the_right_tenant(
        self, fake: FakeLangfuse, url: str
    ) -> None:
        fake.add_prompt(PK, SK, "p", "secret stuff")
        async with registry_for(url) as base:
            tenants = LangfuseTenants(base)
            right_key, right = tenants.resolve(PK, SK)
            assert (await right.get_prompt("p")).prompt == "secret stuff"
            wrong_key, wrong = tenants.resolve(PK, SK + "x")
            assert wrong_key != right_key
            assert wrong is not right
            with pytest.raises(RegistryAuthError):
                await wrong.get_prompt("p")
            text = repr(tenants) + repr(tenants._pool) + right_key + wrong_key
            assert SK not in text
            assert basic(PK, SK) not in text

    @pytest.mark.parametrize(
        "host",
        [
            "http://evil.example",
            "https://{hostport}",
            "http://127.0.0.1:1",
            "http://localhost:{port}",
            "http://user:pw@{hostport}",
            "http://{hostport}@evil.example",
            "http://evil.example#@{hostport}",
            "http://{hostport}/../api",
            "http://{hostport}/other",
            "http://{hostport}?x=1",
            "http://{hostport}\\@evil.example",
            "http://{hostport} ",
            "{hostport}",
            "file:///etc/passwd",
            "",
        ],
    )
    async def test_disallowed_host_rejected_without_requests(
        self, fake: FakeLangfuse, url: str, other: FakeLangfuse, other_url: str, host: str
    ) -> None:
        hostport = url.removeprefix("http://")
        host = host.format(hostport=hostport, port=hostport.rsplit(":", 1)[1])
        other.add_prompt(PK, SK, "p", "x")
        async with registry_for(url) as base:
            tenants = LangfuseTenants(base)
            with pytest.raises(InvalidPromptRequest) as info:
                tenants.resolve(PK, SK, host)
            with pytest.raises(InvalidPromptRequest):
                tenants.resolve(PK, SK, other_url)
        assert info.value.param == "langfuse_host"
        assert fake.request_count == 0
        assert other.request_count == 0
        assert len(tenants) == 0

    async def test_allow_list(
        self, fake: FakeLangfuse, url: str, other: FakeLangfuse, other_url: str
    ) -> None:
        other.add_prompt(PK, SK, "p", "from the other host")
        fake.add_prompt(PK, SK, "p", "from the base host")
        async with registry_for(url) as base:
            tenants = LangfuseTenants(base, allowed_hosts=[other_url + "/"])
            key_other, reg_other = tenants.resolve(PK, SK, "HTTP" + other_url[4:] + "/")
            key_base, reg_base = tenants.resolve(PK, SK, None)
            assert tenants.resolve(PK, SK, url)[0] == key_base
            assert key_other != key_base
            assert reg_base.base_url == url
            assert reg_other.base_url == other_url
            assert (await reg_other.get_prompt("p")).prompt == "from the other host"
            assert (await reg_base.get_prompt("p")).prompt == "from the base host"
        assert other.request_count == 1
        assert fake.request_count == 1

    async def test_bad_keys_rejected(self, url: str) -> None:
        async with registry_for(url) as base:
            tenants = LangfuseTenants(base)
            with pytest.raises(InvalidPromptRequest) as info:
                tenants.resolve("", SK)
            assert info.value.param == "langfuse_public_key"
            with pytest.raises(InvalidPromptRequest):
                tenants.resolve(PK, "")

    async def test_pool_is_bounded(self, url: str) -> None:
        async with registry_for(url) as base:
            tenants = LangfuseTenants(base, max_tenants=2)
            _, first = tenants.resolve("pk-1", "sk-1")
            tenants.resolve("pk-2", "sk-2")
            tenants.resolve("pk-3", "sk-3")
            assert len(tenants) == 2
            _, again = tenants.resolve("pk-1", "sk-1")
            assert again is not first
            assert len(tenants) == 2
        with pytest.raises(ValueError, match="max_tenants"):
            LangfuseTenants(base, max_tenants=0)


class TestFaithfulToSdk:
    """The same requests and prompts as the official `langfuse` SDK, against the same fake."""

    pytestmark = pytest.mark.anyio

    async def test_same_requests_as_the_sdk_async_client(
        self, fake: FakeLangfuse, url: str
    ) -> None:
        from langfuse.api import AsyncLangfuseAPI

        fake.add_prompt(PK, SK, "team/support bot", "x")
        fake.add_prompt(PK, SK, "team/support bot", "y", labels=["beta tester"])
        refs: list[dict[str, Any]] = [{}, {"version": 2}, {"label": "beta tester"}]
        async with httpx.AsyncClient() as client, registry_for(url) as registry:
            sdk = AsyncLangfuseAPI(base_url=url, username=PK, password=SK, httpx_client=client)
            for ref in refs:
                await sdk.prompts.get(
                    "team%2Fsupport%20bot",
                    **ref,
                    request_options={"max_retries": 0, "timeout_in_seconds": 5},
                )
                await registry.get_prompt("team/support bot", **ref)
        seen = [(r.raw_path, r.query, r.authorization) for r in fake.requests]
        assert seen[0::2] == seen[1::2]

    @pytest.mark.parametrize("anyio_backend", ["asyncio"])
    async def test_same_prompts_as_the_sdk_get_prompt(self, fake: FakeLangfuse, url: str) -> None:
        # Runs once: the sync SDK blocks and starts threads, so it gets its own thread here.
        from langfuse import Langfuse

        public_key = f"pk-lf-sdk-{uuid.uuid4().hex}"  # the SDK keeps one resource set per key
        fake.add_prompt(public_key, SK, "folder/text", "Hi {{name}}", config={"model": "m"})
        fake.add_prompt(public_key, SK, "folder/text", "Hi v2", labels=["staging"])
        fake.add_prompt(public_key, SK, "chat", CHAT, config=None, tags=["a"])
        cases: list[tuple[str, dict[str, Any]]] = [
            ("folder/text", {}),
            ("folder/text", {"label": "staging"}),
            ("folder/text", {"version": 1}),
            ("chat", {"type": "chat"}),
        ]

        def fetch_with_sdk() -> list[Any]:
            sdk = Langfuse(
                public_key=public_key, secret_key=SK, base_url=url, tracing_enabled=False
            )
            try:
                return [
                    sdk.get_prompt(name, cache_ttl_seconds=0, max_retries=0, **kwargs)
                    for name, kwargs in cases
                ]
            finally:
                sdk.shutdown()

        expected = await anyio.to_thread.run_sync(fetch_with_sdk)
        async with registry_for(url, public_key=public_key) as registry:
            got = [
                await registry.get_prompt(name, **{k: v for k, v in kwargs.items() if k != "type"})
                for name, kwargs in cases
            ]
        for theirs, ours in zip(expected, got, strict=True):
            assert (ours.name, ours.version, ours.labels, ours.tags) == (
                theirs.name,
                theirs.version,
                tuple(theirs.labels),
                tuple(theirs.tags),
            )
            assert ours.config == (theirs.config or {})
            if ours.type == "text":
                assert ours.prompt == theirs.prompt
            else:
                assert list(ours.prompt) == [
                    {k: v for k, v in m.items() if not (k == "type" and v == "message")}
                    for m in theirs.prompt
                ]
        seen = [(r.raw_path, r.query, r.authorization) for r in fake.requests]
        assert seen[: len(cases)] == seen[len(cases) :]


class TestRetryPolicy:
    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            ("0", 0.0),
            ("3", 3.0),
            (" 1.5 ", 1.5),
            ("-4", 0.0),
            ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
            ("soon", None),
            ("nan", None),
            ("", None),
        ],
    )
    def test_retry_after_parsing(self, header: str, expected: float | None) -> None:
        from prompt_middleware.registries.langfuse import _retry_after

        assert _retry_after(httpx.Headers({"retry-after": header})) == expected

    def test_retry_after_http_date_in_the_future(self) -> None:
        from email.utils import formatdate

        from prompt_middleware.registries.langfuse import _retry_after

        wait = _retry_after(
            httpx.Headers({"retry-after": formatdate(time.time() + 30, usegmt=True)})
        )
        assert wait is not None
        assert 25 < wait <= 31

    def test_backoff_is_capped_exponential_with_jitter(self) -> None:
        registry = LangfuseRegistry(PK, SK, retry_base_delay=1.0, retry_max_delay=4.0)
        for _ in range(50):
            assert 0.5 <= registry._backoff(0, None) <= 1.0
            assert 1.0 <= registry._backoff(1, None) <= 2.0
            assert 2.0 <= registry._backoff(6, None) <= 4.0
        assert registry._backoff(0, 2.5) == 2.5
        assert registry._backoff(0, 60.0) == 4.0

    def test_is_a_prompt_registry(self) -> None:
        from prompt_middleware.registries.base import PromptRegistry

        assert isinstance(LangfuseRegistry(PK, SK), PromptRegistry)
