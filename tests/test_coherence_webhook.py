"""Langfuse webhooks: signatures, outcomes, dedupe and project-scoped invalidation."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from starlette.types import Message

from prompt_middleware.core.prompts import Prompt
from prompt_middleware.registries.cache import CachedRegistry
from prompt_middleware.registries.coherence import (
    SIGNATURE_HEADER,
    Coherence,
    WebhookApp,
    sign,
    verify_signature,
)
from prompt_middleware.registries.langfuse import LangfuseRegistry
from prompt_middleware.registries.memory import InMemoryRegistry
from prompt_middleware.testing import asgi_client

from .fake_langfuse import FakeLangfuse

pytestmark = pytest.mark.anyio

SECRET = "lf-whsec_" + "ab" * 32
OTHER_SECRET = "lf-whsec_" + "cd" * 32
PROJECT = "project-1"


def payload(
    *, delivery: str = "evt-1", kind: str = "prompt-version", project: str = PROJECT, **extra: Any
) -> bytes:
    body: dict[str, Any] = {
        "id": delivery,
        "timestamp": "2026-12-02T10:00:00.000Z",
        "type": kind,
        "apiVersion": "v1",
        "action": "updated",
        "prompt": {
            "id": "p-1",
            "name": "greet",
            "version": 2,
            "projectId": project,
            "labels": ["production"],
            "prompt": "MALICIOUS body that must never be cached",
            "type": "text",
            "config": {},
            "commitMessage": None,
            "tags": [],
            "createdAt": "2026-12-02T10:00:00.000Z",
            "updatedAt": "2026-12-02T10:00:00.000Z",
        },
        **extra,
    }
    return json.dumps(body).encode()


def greet(version: int = 1) -> Prompt:
    return Prompt(name="greet", version=version, type="text", prompt="Hi", labels=("production",))


# -- signatures --------------------------------------------------------------------------------


def test_signature_is_langfuse_scheme() -> None:
    import hashlib
    import hmac

    body = b'{"id":"x"}'
    header = sign(body, SECRET, timestamp=1700000000)
    # HMAC-SHA256 of "<t>." + body, keyed with the whole secret text (prefix included).
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify_signature(header, body, [SECRET], now=1700000000)


@pytest.mark.parametrize(
    ("header", "body", "now"),
    [
        (None, b"{}", 1000),  # unsigned
        ("", b"{}", 1000),
        (sign(b"{}", OTHER_SECRET, 1000), b"{}", 1000),  # wrong secret
        (sign(b"{}", SECRET, 1000), b"{} ", 1000),  # body changed
        (sign(b"{}", SECRET, 1000), b"{}", 1000 + 301),  # stale
        (sign(b"{}", SECRET, 1000), b"{}", 1000 - 301),  # from the future
        ("t=1000", b"{}", 1000),  # no digest
        (sign(b"{}", SECRET, 1000).split(",")[1], b"{}", 1000),  # no timestamp
        ("t=abc,v1=00", b"{}", 1000),
        ("t=1000,t=1000,v1=00", b"{}", 1000),
        ("garbage", b"{}", 1000),
        (sign(b"{}", SECRET, 1000).replace("v1=", "v0="), b"{}", 1000),
        ("t=1000,v1=" + "0" * 10_000, b"{}", 1000),
    ],
)
def test_bad_signatures_are_refused(header: str | None, body: bytes, now: float) -> None:
    assert not verify_signature(header, body, [SECRET], tolerance=300, now=now)


def test_any_secret_and_any_digest_may_match() -> None:
    body = b"{}"
    header = sign(body, OTHER_SECRET, 1000)
    assert verify_signature(header, body, [SECRET, OTHER_SECRET], now=1000)
    digest = header.split("v1=")[1]
    both = f"t=1000,v1={'0' * 64},v1={digest}"
    assert verify_signature(both, body, [OTHER_SECRET], now=1000)
    assert verify_signature(
        header.upper().replace("T=", "t=").replace("V1=", "v1="), body, [OTHER_SECRET], now=1000
    )


def test_tolerance_is_inclusive() -> None:
    header = sign(b"{}", SECRET, 1000)
    assert verify_signature(header, b"{}", [SECRET], tolerance=300, now=1300)
    assert not verify_signature(header, b"{}", [SECRET], tolerance=0, now=1001)


def test_app_needs_a_secret_and_hides_it() -> None:
    async def ignore(change: object) -> None:
        pass

    with pytest.raises(ValueError, match="secret"):
        WebhookApp([], ignore)
    assert SECRET not in repr(WebhookApp([SECRET], ignore))


# -- the app inside a Coherence ----------------------------------------------------------------


@pytest.fixture
async def cache() -> AsyncIterator[CachedRegistry]:
    cache = CachedRegistry(InMemoryRegistry([greet()]), ttl=60)
    yield cache
    await cache.aclose()


def webhook_headers(
    body: bytes, signature: str | None = "sign", secret: str = SECRET
) -> dict[str, str]:
    """A delivery's headers: `body` signed with `secret` ("sign"), `signature` as given, or no
    signature header (None)."""
    headers = {"content-type": "application/json"}
    if signature == "sign":
        signature = sign(body, secret)
    if signature is not None:
        headers[SIGNATURE_HEADER] = signature
    return headers


async def post(
    client: httpx.AsyncClient, body: bytes, header: str | None = "sign"
) -> httpx.Response:
    return await client.post(
        "/webhooks/langfuse", content=body, headers=webhook_headers(body, header)
    )


def coherent(cache: CachedRegistry, **options: Any) -> Coherence:
    return Coherence(cache, webhook_secrets=[SECRET], project_id=PROJECT, **options)


async def test_bad_signatures_are_401_and_invalidate_nothing(
    cache: CachedRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "prompt_middleware")
    coherence = coherent(cache)
    await cache.get_prompt("greet")
    body = payload()
    stale = int(time.time()) - 3600
    async with asgi_client(coherence.wrap(_NotFound())) as client:
        for header in (
            None,  # unsigned
            sign(body, OTHER_SECRET),  # wrong secret
            sign(body, SECRET, stale),  # stale timestamp
            sign(body + b" ", SECRET),  # signed a different body
            "t=1,v1=zz",
        ):
            response = await post(client, body, header)
            assert response.status_code == 401, header
            assert response.json()["error"]["code"] == "invalid_webhook_signature"
    stats = coherence.stats
    assert stats.cache.entries == 1
    assert sum(stats.cache.invalidations.values()) == 0
    assert stats.webhook is not None
    assert stats.webhook.rejected == 5
    assert stats.webhook.accepted == 0
    # Anyone can send these: one warning, not one per request; the rest at debug level.
    refusals = [r for r in caplog.records if "Refused a webhook delivery" in r.getMessage()]
    assert [r.levelno for r in refusals] == [logging.WARNING] + [logging.DEBUG] * 4
    assert SECRET not in caplog.text


async def test_signed_prompt_version_drops_the_project_and_never_caches_the_body(
    cache: CachedRegistry,
) -> None:
    coherence = coherent(cache)
    await cache.get_prompt("greet")
    async with asgi_client(coherence.wrap(_NotFound())) as client:
        response = await post(client, payload())
    assert response.status_code == 200
    assert response.json() == {"status": "accepted"}
    assert cache.stats.entries == 0
    assert cache.stats.invalidations["webhook"] == 1
    prompt = await cache.get_prompt("greet")  # refetched from the registry
    assert prompt.prompt == "Hi"


async def test_ignored_types_and_duplicates_are_2xx_and_change_nothing_twice(
    cache: CachedRegistry,
) -> None:
    coherence = coherent(cache)
    await cache.get_prompt("greet")
    async with asgi_client(coherence.wrap(_NotFound())) as client:
        for kind in ("trace", "budget-alert", "something-new"):
            response = await post(client, payload(delivery=f"evt-{kind}", kind=kind))
            assert response.status_code == 200
            assert response.json() == {"status": "ignored"}
        assert cache.stats.entries == 1
        assert (await post(client, payload(delivery="evt-9"))).json()["status"] == "accepted"
        await cache.get_prompt("greet")
        for _ in range(3):  # Langfuse retries with the same id
            response = await post(client, payload(delivery="evt-9"))
            assert response.status_code == 200
            assert response.json() == {"status": "duplicate"}
    assert cache.stats.entries == 1
    assert cache.stats.invalidations["webhook"] == 1
    assert coherence.stats.webhook is not None
    assert coherence.stats.webhook.duplicate == 3
    assert coherence.stats.webhook.ignored == 3


async def test_unknown_prompts_and_other_projects_are_2xx(cache: CachedRegistry) -> None:
    coherence = coherent(cache)
    await cache.get_prompt("greet")
    async with asgi_client(coherence.wrap(_NotFound())) as client:
        response = await post(client, payload(project="someone-else"))
    assert response.status_code == 200
    assert cache.stats.entries == 1  # not our project


async def test_unknown_server_project_drops_on_any_project(cache: CachedRegistry) -> None:
    coherence = Coherence(cache, webhook_secrets=[SECRET])  # not Langfuse: no project to learn
    await cache.get_prompt("greet")
    async with asgi_client(coherence.wrap(_NotFound())) as client:
        assert (await post(client, payload(project="any"))).status_code == 200
    assert cache.stats.entries == 0


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"type": "prompt-version"}',  # no id
        json.dumps({"id": "x", "type": "prompt-version"}).encode(),  # no prompt
        json.dumps({"id": "x", "type": "prompt-version", "prompt": {"name": "a"}}).encode(),
        json.dumps({"id": 5, "type": "trace"}).encode(),
    ],
)
async def test_signed_but_malformed_is_400(cache: CachedRegistry, body: bytes) -> None:
    coherence = coherent(cache)
    await cache.get_prompt("greet")
    async with asgi_client(coherence.wrap(_NotFound())) as client:
        response = await post(client, body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_webhook"
    assert cache.stats.entries == 1


async def test_body_size_and_method(cache: CachedRegistry) -> None:
    coherence = coherent(cache, max_body_size=1000)
    async with asgi_client(coherence.wrap(_NotFound())) as client:
        big = payload(padding="x" * 2000)
        response = await post(client, big)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"

        response = await client.get("/webhooks/langfuse")
        assert response.status_code == 405
        response = await client.get("/elsewhere")
        assert response.status_code == 404  # the wrapped app


async def test_a_body_without_length_is_counted_while_read(cache: CachedRegistry) -> None:
    app = coherent(cache, max_body_size=1000).webhook_app
    assert app is not None
    messages = iter([{"type": "http.request", "body": b"x" * 100, "more_body": True}] * 20)
    sent: list[Message] = []

    async def receive() -> Message:
        return next(messages)

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    await app(scope, receive, send)
    assert sent[0]["status"] == 413
    assert len(list(messages)) < 19  # stopped reading soon after the limit


async def test_in_flight_fetch_is_not_stored_after_a_webhook() -> None:
    gate = anyio.Event()
    calls = 0

    class Slow:
        async def get_prompt(
            self, name: str, *, version: int | None = None, label: str | None = None
        ) -> Prompt:
            nonlocal calls
            calls += 1
            if calls == 1:
                await gate.wait()
                return greet(1)
            return greet(2)

    cache = CachedRegistry(Slow(), ttl=60)
    coherence = coherent(cache)
    results: list[Prompt] = []
    async with asgi_client(coherence.wrap(_NotFound())) as client, anyio.create_task_group() as tg:

        async def first() -> None:
            results.append(await cache.get_prompt("greet"))

        tg.start_soon(first)
        while calls == 0:  # noqa: ASYNC110 (state changed by other tasks and threads)
            await anyio.sleep(0.001)
        assert (await post(client, payload())).status_code == 200
        gate.set()
    assert results[0].version == 1  # the waiter still gets its answer
    assert (await cache.get_prompt("greet")).version == 2  # but it was not stored
    await cache.aclose()


async def test_request_tenants_are_mapped_to_their_project(
    clean_fake: FakeLangfuse, served: tuple[FakeLangfuse, str]
) -> None:
    clean_fake.add_prompt("pk-server", "sk-s", "greet", "server")
    clean_fake.add_prompt("pk-a", "sk-a", "greet", "tenant a")
    base = LangfuseRegistry("pk-server", "sk-s", base_url=served[1])
    tenant = LangfuseRegistry("pk-a", "sk-a", base_url=served[1])
    cache = CachedRegistry(base, ttl=60)
    coherence = Coherence(cache, webhook_secrets=[SECRET], project_id="project-pk-server")
    app = coherence.wrap(_NotFound())
    async with asgi_client(app) as client:
        await cache.get_prompt("greet")
        await cache.for_tenant("t-a", tenant).get_prompt("greet")
        # Its project is not known yet: dropped to be safe, and looked up meanwhile.
        await post(client, payload(delivery="1", project="project-pk-server"))
        assert cache.stats.entries == 0
        with anyio.fail_after(5):
            while "t-a" not in coherence._tenant_projects:  # noqa: ASYNC110 (state changed by other tasks and threads)
                await anyio.sleep(0.01)
        await cache.get_prompt("greet")
        await cache.for_tenant("t-a", tenant).get_prompt("greet")
        await post(client, payload(delivery="2", project="project-pk-server"))
        assert cache.stats.entries == 1  # only the tenant of the other project is left
        await post(client, payload(delivery="3", project="project-pk-a"))
        assert cache.stats.entries == 0
    await base.aclose()
    await tenant.aclose()


async def test_server_project_is_learned_from_langfuse(
    clean_fake: FakeLangfuse, served: tuple[FakeLangfuse, str]
) -> None:
    clean_fake.add_prompt("pk-server", "sk-s", "greet", "server")
    base = LangfuseRegistry("pk-server", "sk-s", base_url=served[1])
    cache = CachedRegistry(base, ttl=60)
    coherence = Coherence(cache, webhook_secrets=[SECRET])
    async with asgi_client(coherence.wrap(_NotFound())) as client:
        with anyio.fail_after(5):
            while coherence.project_id is None:  # noqa: ASYNC110 (state changed by other tasks and threads)
                await anyio.sleep(0.01)
        assert coherence.project_id == "project-pk-server"
        await cache.get_prompt("greet")
        await post(client, payload(delivery="1", project="other"))
        assert cache.stats.entries == 1
    await base.aclose()


class _NotFound:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            from prompt_middleware._asgi import answer_lifespan

            await answer_lifespan(receive, send)
            return
        from prompt_middleware._asgi import send_json

        await send_json(send, 404, {"detail": "not found"})
