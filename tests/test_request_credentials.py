"""Per-request Langfuse credentials through the middleware: tenants, allow-list, no leaks."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from prompt_middleware import LangfuseRegistry, PromptMiddleware

from .fake_langfuse import FakeLangfuse
from .helpers import Recorder, client_for

pytestmark = pytest.mark.anyio

BASE_PK, BASE_SK = "pk-lf-base", "sk-lf-base-secret"
A_PK, A_SK = "pk-lf-tenant-a", "sk-lf-tenant-a-secret"
B_PK, B_SK = "pk-lf-tenant-b", "sk-lf-tenant-b-secret"


@pytest.fixture
def fake(clean_fake: FakeLangfuse) -> FakeLangfuse:
    clean_fake.add_prompt(BASE_PK, BASE_SK, "greet", "base says hi")
    clean_fake.add_prompt(A_PK, A_SK, "greet", "tenant A says hi")
    clean_fake.add_prompt(B_PK, B_SK, "greet", "tenant B says hi")
    return clean_fake


@asynccontextmanager
async def gateway(url: str, **options: Any) -> AsyncIterator[tuple[PromptMiddleware, Recorder]]:
    registry = LangfuseRegistry(BASE_PK, BASE_SK, base_url=url, max_retries=0)
    recorder = Recorder()
    middleware = PromptMiddleware(recorder, registry=registry, **options)
    try:
        yield middleware, recorder
    finally:
        await middleware.aclose()


def creds(public_key: str, secret: str, **extra: Any) -> dict[str, Any]:
    return {"langfuse_public_key": public_key, "langfuse_secret_key": secret, **extra}


async def test_tenants_get_their_own_prompts_under_concurrency(
    fake: FakeLangfuse, served: tuple[FakeLangfuse, str]
) -> None:
    tenants = {None: "base says hi", A_PK: "tenant A says hi", B_PK: "tenant B says hi"}
    secrets = {A_PK: A_SK, B_PK: B_SK}
    results: list[tuple[str | None, int, str]] = []

    async with (
        gateway(served[1], allow_request_credentials=True) as (mw, recorder),
        client_for(mw) as client,
    ):

        async def one(i: int) -> None:
            pk = list(tenants)[i % 3]
            body: dict[str, Any] = {"model": "m", "prompt_id": "greet", "user": f"u{i}"}
            if pk is not None:
                body |= creds(pk, secrets[pk])
            response = await client.post("/v1/chat/completions", json=body)
            results.append((pk, response.status_code, body["user"]))

        async with anyio.create_task_group() as tg:
            for i in range(150):
                tg.start_soon(one, i)

    assert all(status == 200 for _, status, _ in results)
    by_user = {call.json["user"]: call.json for call in recorder.calls}
    for pk, _, user in results:
        sent = by_user[user]
        assert sent["messages"] == [{"role": "user", "content": tenants[pk]}]
        assert not any(key.startswith("langfuse_") for key in sent)
    # One fetch per tenant: the cache keys by tenant and collapses concurrent misses.
    assert fake.request_count == 3


async def test_wrong_secret_is_refused_after_the_right_one_filled_the_cache(
    fake: FakeLangfuse, served: tuple[FakeLangfuse, str]
) -> None:
    async with (
        gateway(served[1], allow_request_credentials=True) as (mw, recorder),
        client_for(mw) as client,
    ):
        ok = await client.post(
            "/v1/chat/completions", json={"prompt_id": "greet", **creds(A_PK, A_SK)}
        )
        wrong = await client.post(
            "/v1/chat/completions",
            json={"prompt_id": "greet", **creds(A_PK, "sk-lf-guessed")},
        )
    assert ok.status_code == 200
    assert wrong.status_code == 502
    assert wrong.json()["error"]["code"] == "prompt_registry_auth_failed"
    assert "sk-lf-guessed" not in wrong.text
    assert len(recorder.calls) == 1


async def test_host_outside_allow_list_is_400_and_nothing_leaves(
    fake: FakeLangfuse, served: tuple[FakeLangfuse, str]
) -> None:
    async with (
        gateway(served[1], allow_request_credentials=True) as (mw, recorder),
        client_for(mw) as client,
    ):
        response = await client.post(
            "/v1/chat/completions",
            json={
                "prompt_id": "greet",
                **creds(A_PK, A_SK, langfuse_host="http://169.254.169.254"),
            },
        )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "langfuse_host"
    assert fake.request_count == 0
    assert recorder.calls == []


async def test_allowed_host_is_used(fake: FakeLangfuse, served: tuple[FakeLangfuse, str]) -> None:
    async with (
        gateway(served[1], allow_request_credentials=True, allowed_langfuse_hosts=[served[1]]) as (
            mw,
            _,
        ),
        client_for(mw) as client,
    ):
        response = await client.post(
            "/v1/chat/completions",
            json={"prompt_id": "greet", **creds(B_PK, B_SK, langfuse_host=served[1])},
        )
    assert response.status_code == 200
    assert response.headers["x-prompt-name"] == "greet"


async def test_secrets_never_logged(
    fake: FakeLangfuse, served: tuple[FakeLangfuse, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with (
        gateway(served[1], allow_request_credentials=True) as (mw, _),
        client_for(mw) as client,
    ):
        for secret in (A_SK, "sk-lf-wrong-one"):
            await client.post(
                "/v1/chat/completions",
                json={"prompt_id": "greet", "prompt_version": 7, **creds(A_PK, secret)},
            )
    for secret in (A_SK, "sk-lf-wrong-one", BASE_SK):
        assert secret not in caplog.text


def test_request_credentials_need_a_langfuse_registry() -> None:
    from prompt_middleware import InMemoryRegistry

    with pytest.raises(TypeError, match="LangfuseRegistry"):
        PromptMiddleware(Recorder(), registry=InMemoryRegistry(), allow_request_credentials=True)
