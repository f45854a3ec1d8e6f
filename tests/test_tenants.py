"""Tenants (registries/tenants.py): per-request Langfuse credentials, one cache-aware registry each.

Unit tests of the pool, then requests through the middleware (allow-list, cache, no leaks).
Attacks on the same paths (URL tricks, secrets in every outcome, cross-talk under load) are in
test_tenants_security.py.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from prompt_middleware import CachedRegistry, InMemoryRegistry, LangfuseRegistry, PromptMiddleware
from prompt_middleware.core.errors import InvalidPromptRequest
from prompt_middleware.core.references import Credentials
from prompt_middleware.registries.tenants import LangfuseTenants
from prompt_middleware.testing import CaptureApp, asgi_client

from .fake_langfuse import FakeLangfuse
from .helpers import Clock, asgi_call, openai_error, settle

pytestmark = pytest.mark.anyio

# --- the pool, malformed credentials ---------------------------------------------------------

# Nothing listens on port 9: a request that reached Langfuse would fail, not pass.
BASE = "http://127.0.0.1:9"
MALFORMED_HOSTS = [
    "http://[::1",
    "http://[evil]",
    "https://[lf.example.com]",
    "http://[::1]:99999",
    "http://127.0.0.1:9\ud800",
]


def base_registry() -> LangfuseRegistry:
    return LangfuseRegistry("pk-lf-base", "sk-lf-base", base_url=BASE, max_retries=0)


@pytest.mark.parametrize("host", MALFORMED_HOSTS)
def test_malformed_hosts_are_refused_as_the_clients_error(host: str) -> None:
    tenants = LangfuseTenants(base_registry())
    with pytest.raises(InvalidPromptRequest) as info:
        tenants.registry_for(Credentials("pk-lf-a", "sk-lf-a", host))
    assert info.value.param == "langfuse_host"


@pytest.mark.parametrize("host", MALFORMED_HOSTS)
async def test_malformed_hosts_through_the_middleware_are_a_400(
    host: str, capture: CaptureApp
) -> None:
    mw = PromptMiddleware(capture, registry=base_registry(), allow_request_credentials=True)
    body = {
        "prompt_id": "greet",
        "langfuse_public_key": "pk-lf-a",
        "langfuse_secret_key": "sk-lf-a",
        "langfuse_host": host,
    }
    send = await asgi_call(mw, json.dumps(body).encode())
    openai_error(send, 400, "invalid_prompt_request", param="langfuse_host")
    assert capture.requests == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("langfuse_public_key", "pk\ud800"),
        ("langfuse_secret_key", "sk\udfff"),
        ("langfuse_secret", "sk\ud800"),
        ("langfuse_host", "http://127.0.0.1:9/\ud800"),
    ],
)
async def test_unsendable_credentials_are_a_400_not_a_500(
    field: str, value: str, capture: CaptureApp, caplog: pytest.LogCaptureFixture
) -> None:
    mw = PromptMiddleware(capture, registry=base_registry(), allow_request_credentials=True)
    body = {"prompt_id": "greet", "langfuse_public_key": "pk-lf-a", "langfuse_secret_key": "sk"}
    if field == "langfuse_secret":
        del body["langfuse_secret_key"]
    body[field] = value
    send = await asgi_call(mw, json.dumps(body).encode())
    openai_error(send, 400, "invalid_prompt_request", param=field)
    assert value not in send.body.decode("utf-8", "surrogatepass")
    assert capture.requests == []
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []  # no traceback


def test_registry_for_is_cache_aware_and_pooled() -> None:
    base = base_registry()
    cache = CachedRegistry(base)
    tenants = LangfuseTenants(base, cache=cache)
    creds = Credentials("pk-lf-a", "sk-lf-a")
    first = tenants.registry_for(creds)
    assert tenants.registry_for(Credentials("pk-lf-a", "sk-lf-a")) is first
    assert tenants.registry_for(Credentials("pk-lf-a", "sk-lf-other")) is not first
    assert not isinstance(first, LangfuseRegistry)  # the cache's view of that tenant
    tenant, registry = tenants.resolve("pk-lf-a", "sk-lf-a")
    assert isinstance(registry, LangfuseRegistry)
    assert "sk-lf-a" not in repr(first) + repr(registry) + tenant
    uncached = LangfuseTenants(base)
    assert isinstance(uncached.registry_for(creds), LangfuseRegistry)


# --- through the middleware, against a fake Langfuse ----------------------------------------------

BASE_PK, BASE_SK = "pk-lf-base", "sk-lf-base-secret"
A_PK, A_SK = "pk-lf-tenant-a", "sk-lf-tenant-a-secret"
B_PK, B_SK = "pk-lf-tenant-b", "sk-lf-tenant-b-secret"


@pytest.fixture
def fake(clean_fake: FakeLangfuse) -> FakeLangfuse:
    clean_fake.add_prompt(BASE_PK, BASE_SK, "greet", "base says hi")
    clean_fake.add_prompt(A_PK, A_SK, "greet", "tenant A says hi")
    clean_fake.add_prompt(B_PK, B_SK, "greet", "tenant B says hi")
    return clean_fake


@pytest.fixture
def gateway(
    served: tuple[FakeLangfuse, str], capture: CaptureApp
) -> Callable[..., PromptMiddleware]:
    """Builds `PromptMiddleware(capture, ...)` over the fake Langfuse's base project; the
    lifespan that `asgi_client` runs closes it."""

    def build(**options: Any) -> PromptMiddleware:
        registry = LangfuseRegistry(BASE_PK, BASE_SK, base_url=served[1], max_retries=0)
        return PromptMiddleware(capture, registry=registry, **options)

    return build


def creds(public_key: str, secret: str, **extra: Any) -> dict[str, Any]:
    return {"langfuse_public_key": public_key, "langfuse_secret_key": secret, **extra}


async def test_tenants_get_their_own_prompts_under_concurrency(
    fake: FakeLangfuse,
    served: tuple[FakeLangfuse, str],
    capture: CaptureApp,
    gateway: Callable[..., PromptMiddleware],
) -> None:
    tenants = {None: "base says hi", A_PK: "tenant A says hi", B_PK: "tenant B says hi"}
    secrets = {A_PK: A_SK, B_PK: B_SK}
    results: list[tuple[str | None, int, str]] = []

    async with asgi_client(gateway(allow_request_credentials=True)) as client:

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
    by_user = {call.json["user"]: call.json for call in capture.requests}
    for pk, _, user in results:
        sent = by_user[user]
        assert sent["messages"] == [{"role": "user", "content": tenants[pk]}]
        assert not any(key.startswith("langfuse_") for key in sent)
    # One fetch per tenant: the cache keys by tenant and collapses concurrent misses.
    assert fake.request_count == 3


async def test_wrong_secret_is_refused_after_the_right_one_filled_the_cache(
    fake: FakeLangfuse,
    served: tuple[FakeLangfuse, str],
    capture: CaptureApp,
    gateway: Callable[..., PromptMiddleware],
) -> None:
    async with asgi_client(gateway(allow_request_credentials=True)) as client:
        ok = await client.post(
            "/v1/chat/completions", json={"prompt_id": "greet", **creds(A_PK, A_SK)}
        )
        wrong = await client.post(
            "/v1/chat/completions",
            json={"prompt_id": "greet", **creds(A_PK, "sk-lf-guessed")},
        )
    assert ok.status_code == 200
    openai_error(wrong, 502, "prompt_registry_auth_failed")
    assert "sk-lf-guessed" not in wrong.text
    assert len(capture.requests) == 1


async def test_host_outside_allow_list_is_400_and_nothing_leaves(
    fake: FakeLangfuse,
    served: tuple[FakeLangfuse, str],
    capture: CaptureApp,
    gateway: Callable[..., PromptMiddleware],
) -> None:
    async with asgi_client(gateway(allow_request_credentials=True)) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={
                "prompt_id": "greet",
                **creds(A_PK, A_SK, langfuse_host="http://169.254.169.254"),
            },
        )
    openai_error(response, 400, "invalid_prompt_request", param="langfuse_host")
    assert fake.request_count == 0
    assert capture.requests == []


async def test_allowed_host_is_used(
    fake: FakeLangfuse, served: tuple[FakeLangfuse, str], gateway: Callable[..., PromptMiddleware]
) -> None:
    mw = gateway(allow_request_credentials=True, allowed_langfuse_hosts=[served[1]])
    async with asgi_client(mw) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"prompt_id": "greet", **creds(B_PK, B_SK, langfuse_host=served[1])},
        )
    assert response.status_code == 200
    assert response.headers["x-prompt-name"] == "greet"


async def test_secrets_never_logged(
    fake: FakeLangfuse,
    served: tuple[FakeLangfuse, str],
    caplog: pytest.LogCaptureFixture,
    gateway: Callable[..., PromptMiddleware],
) -> None:
    caplog.set_level(logging.DEBUG)
    async with asgi_client(gateway(allow_request_credentials=True)) as client:
        for secret in (A_SK, "sk-lf-wrong-one"):
            await client.post(
                "/v1/chat/completions",
                json={"prompt_id": "greet", "prompt_version": 7, **creds(A_PK, secret)},
            )
    for secret in (A_SK, "sk-lf-wrong-one", BASE_SK):
        assert secret not in caplog.text


def test_request_credentials_need_a_langfuse_registry() -> None:
    with pytest.raises(TypeError, match="LangfuseRegistry"):
        PromptMiddleware(CaptureApp(), registry=InMemoryRegistry(), allow_request_credentials=True)


async def test_revoked_request_keys_stop_working_at_the_next_refresh(
    fake: FakeLangfuse, served: tuple[FakeLangfuse, str], capture: CaptureApp
) -> None:
    """A 401 from Langfuse is not an outage: the tenant's cached prompt is not served stale to
    keys Langfuse has revoked (issue #16, item 5), and the refusal is remembered briefly."""
    clock = Clock()
    registry = LangfuseRegistry(BASE_PK, BASE_SK, base_url=served[1], max_retries=0)
    cache = CachedRegistry(registry, ttl=10, negative_ttl=5, clock=clock)
    mw = PromptMiddleware(capture, registry=cache, allow_request_credentials=True)
    body = {"model": "m", "prompt_id": "greet", **creds(A_PK, A_SK)}
    async with asgi_client(mw) as client:
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        del fake.projects[(A_PK, A_SK)]  # the keys are revoked
        clock.now += 11
        # The stale copy answers while the refresh learns of the revocation...
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        await settle(lambda: cache.stats.fetch_errors == 1)
        # ...and from then on the revoked keys get nothing, without asking Langfuse each time.
        seen = fake.request_count
        for _ in range(3):
            response = await client.post("/v1/chat/completions", json=body)
            err = openai_error(response, 502, "prompt_registry_auth_failed")
            assert A_SK not in err["message"]
        assert fake.request_count == seen
        # Other keys are untouched.
        other = {"model": "m", "prompt_id": "greet", **creds(B_PK, B_SK)}
        assert (await client.post("/v1/chat/completions", json=other)).status_code == 200
    assert [c.json["messages"][0]["content"] for c in capture.requests] == [
        "tenant A says hi",
        "tenant A says hi",
        "tenant B says hi",
    ]
