"""Invalidations shared through a real redis-server: fan-out, resubscribe, outages, L2, CLI."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import coredis
import httpx
import pytest

from prompt_middleware import PromptMiddleware
from prompt_middleware.core.errors import PromptNotFound
from prompt_middleware.core.prompts import Prompt
from prompt_middleware.registries.cache import CachedRegistry
from prompt_middleware.registries.coherence import SIGNATURE_HEADER, Coherence, sign
from prompt_middleware.registries.coherence.redis import publish_invalidation
from prompt_middleware.registries.langfuse import LangfuseRegistry
from prompt_middleware.registries.memory import InMemoryRegistry
from prompt_middleware.testing import CaptureApp, asgi_client

from .fake_langfuse import FakeLangfuse
from .redis_fixture import RedisServer, redis_server
from .servers import free_port, running_server
from .test_coherence_webhook import SECRET, payload

pytestmark = pytest.mark.anyio
__all__ = ["redis_server"]

LOGGER = "prompt_middleware.coherence.redis"


class Counting:
    """An in-memory registry that counts calls and can move to a new version."""

    def __init__(self) -> None:
        self.version = 1
        self.calls = 0

    async def get_prompt(
        self, name: str, *, version: int | None = None, label: str | None = None
    ) -> Prompt:
        self.calls += 1
        text = f"v{self.version}"
        prompt = Prompt(
            name=name, version=self.version, type="text", prompt=text, labels=("production",)
        )
        return await InMemoryRegistry([prompt]).get_prompt(name, version=version, label=label)


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    with anyio.fail_after(within):
        while not check():  # noqa: ASYNC110 (state changed by other tasks and threads)
            await anyio.sleep(0.005)


@asynccontextmanager
async def running(*coherences: Coherence) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        for coherence in coherences:
            tg.start_soon(coherence.run)
        yield
        tg.cancel_scope.cancel()


def up(coherence: Coherence) -> bool:
    return coherence.fanout is not None and coherence.fanout.up


def worker(url: str, registry: Any = None, **options: Any) -> Coherence:
    cache = CachedRegistry(registry or Counting(), ttl=600)
    return Coherence(
        cache, webhook_secrets=[SECRET], redis_url=url, project_id="project-1", **options
    )


async def signed(app: Any, body: bytes) -> httpx.Response:
    async with asgi_client(app, run_lifespan=False) as client:
        headers = {SIGNATURE_HEADER: sign(body, SECRET)}
        return await client.post("/", content=body, headers=headers)


async def test_a_webhook_to_one_worker_reaches_the_other(redis_server: RedisServer) -> None:
    a, b = worker(redis_server.url), worker(redis_server.url)
    async with running(a, b):
        await eventually(lambda: up(a) and up(b))
        await a.cache.get_prompt("greet")
        await b.cache.get_prompt("greet")
        assert (await signed(a.webhook_app, payload())).status_code == 200
        assert a.cache.stats.entries == 0  # before the answer
        await eventually(lambda: b.cache.stats.entries == 0, within=1.0)
    assert a.cache.stats.invalidations["webhook"] == 1
    assert b.cache.stats.invalidations["pubsub"] == 1
    assert a.cache.stats.invalidations["pubsub"] == 0  # its own message is not applied twice
    assert b.stats.redis is not None
    assert b.stats.redis.received == 1


async def test_duplicates_are_recognised_across_workers(redis_server: RedisServer) -> None:
    a, b = worker(redis_server.url), worker(redis_server.url)
    async with running(a, b):
        await eventually(lambda: up(a) and up(b))
        assert (await signed(a.webhook_app, payload(delivery="d1"))).json()["status"] == "accepted"
        await eventually(lambda: b.cache.stats.invalidations["pubsub"] == 1)
        response = await signed(b.webhook_app, payload(delivery="d1"))  # a retry, elsewhere
        assert response.json()["status"] == "duplicate"
        # Claimed, bumped and published once, in one step: the retry changed no epoch.
        epochs = await _epochs(redis_server.url)
        assert epochs == {"project:project-1": "1"}
    assert b.cache.stats.invalidations["webhook"] == 0
    assert a.stats.redis is not None
    assert b.stats.redis is not None
    assert (a.stats.redis.published, b.stats.redis.published) == (1, 0)
    assert a.stats.webhook is not None
    assert b.stats.webhook is not None
    assert (a.stats.webhook.accepted, b.stats.webhook.duplicate) == (1, 1)


async def _epochs(url: str) -> dict[str, str]:
    client = coredis.Redis.from_url(url, decode_responses=True)
    async with client:
        return dict(await client.hgetall("prompt_middleware:epochs"))


async def test_api_invalidations_and_the_cli_reach_everyone(redis_server: RedisServer) -> None:
    a, b = worker(redis_server.url), worker(redis_server.url)
    async with running(a, b):
        await eventually(lambda: up(a) and up(b))
        for coherence in (a, b):
            await coherence.cache.get_prompt("greet")
            await coherence.cache.get_prompt("other")
        a.cache.invalidate("greet")  # a plain cache call, passed on
        await eventually(lambda: b.cache.stats.entries == 1)
        await b.invalidate("other")
        await eventually(lambda: a.cache.stats.entries == 0)
        for coherence in (a, b):
            await coherence.cache.get_prompt("greet")
        await publish_invalidation(redis_server.url, "greet")
        await eventually(lambda: a.cache.stats.entries == 0 and b.cache.stats.entries == 0)


async def test_resubscribe_drops_what_changed_meanwhile(redis_server: RedisServer) -> None:
    b = worker(redis_server.url)
    async with running(b):
        await eventually(lambda: up(b))
        await b.invalidate("greet")  # b now knows an epoch
        await b.cache.get_prompt("greet")
        redis_server.stop()
        await eventually(lambda: not up(b))
        assert (await b.cache.get_prompt("greet")).version == 1  # still served locally
        redis_server.start()  # empty: the epochs it had are gone
        await eventually(lambda: up(b))
        # Epochs differ from what b knew, so it cannot trust its entries.
        await eventually(lambda: b.cache.stats.entries == 0)
        await b.cache.get_prompt("greet")
    # A change published while b was not listening at all is caught on subscribe.
    await publish_invalidation(redis_server.url, "greet", scope="server")
    async with running(b):
        await eventually(lambda: up(b))
        await eventually(lambda: b.cache.stats.entries == 0)
    assert b.stats.redis is not None
    assert b.stats.redis.subscribes == 3
    assert b.stats.redis.resyncs >= 2


async def test_redis_down_at_start_then_back(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    redis_server.stop()
    a, b = worker(redis_server.url), worker(redis_server.url)
    caplog.set_level(logging.WARNING, LOGGER)
    async with running(a, b):
        await a.cache.get_prompt("greet")
        await b.cache.get_prompt("greet")
        # A webhook still works locally and is answered at once.
        assert (await signed(a.webhook_app, payload(delivery="x1"))).status_code == 200
        assert a.cache.stats.entries == 0
        # A few reconnect attempts each, yet one warning per worker for the outage.
        await eventually(
            lambda: all(w.stats.redis is not None and w.stats.redis.errors >= 3 for w in (a, b))
        )
        warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(warnings) == 2
        redis_server.start()
        await eventually(lambda: up(a) and up(b))
        # The queued invalidation was published once Redis came back.
        await eventually(lambda: b.cache.stats.entries == 0)


async def test_redis_killed_mid_run_requests_keep_succeeding(redis_server: RedisServer) -> None:
    registry = Counting()
    a, b = worker(redis_server.url, registry), worker(redis_server.url, registry)
    async with running(a, b):
        await eventually(lambda: up(a) and up(b))
        redis_server.stop()
        await eventually(lambda: not up(a) and not up(b))
        for _ in range(20):
            assert (await a.cache.get_prompt("greet")).prompt == "v1"
            assert (await b.cache.get_prompt("greet")).prompt == "v1"
        redis_server.start()
        await eventually(lambda: up(a) and up(b))
        await a.cache.get_prompt("greet")
        await b.cache.get_prompt("greet")
        registry.version = 2
        assert (await signed(a.webhook_app, payload(delivery="after"))).status_code == 200
        await eventually(lambda: b.cache.stats.entries == 0, within=1.0)
        assert (await b.cache.get_prompt("greet")).prompt == "v2"
    assert a.stats.redis is not None
    assert a.stats.redis.outages == 1


async def test_shared_l2_cache(redis_server: RedisServer) -> None:
    registry = Counting()
    a = worker(redis_server.url, registry, shared_cache=True)
    b = worker(redis_server.url, registry, shared_cache=True)
    async with running(a, b):
        await eventually(lambda: up(a) and up(b))
        await a.cache.get_prompt("greet")
        await a.cache.get_prompt("greet", version=1)
        assert registry.calls == 2
        assert (await b.cache.get_prompt("greet")).prompt == "v1"  # from Redis
        assert registry.calls == 2
        # Typed keys: label "1" is not version 1.
        with pytest.raises(PromptNotFound):
            await b.cache.get_prompt("greet", label="1")
        registry.version = 2
        assert (await signed(a.webhook_app, payload())).status_code == 200
        await eventually(lambda: b.cache.stats.entries == 0)
        assert (await b.cache.get_prompt("greet")).prompt == "v2"  # new epoch, new key
    assert b.stats.shared_hits == 1


async def test_two_served_gateways_share_invalidations(
    redis_server: RedisServer, clean_fake: FakeLangfuse, served: tuple[FakeLangfuse, str]
) -> None:
    clean_fake.add_prompt("pk", "sk", "greet", "Hello v1")
    urls = []
    with _gateway(served[1], redis_server.url) as one, _gateway(served[1], redis_server.url) as two:
        urls = [one, two]
        async with httpx.AsyncClient() as client:
            body = {"model": "m", "prompt_id": "greet", "messages": []}

            async def versions() -> list[str]:
                answers = [await client.post(f"{u}/v1/chat/completions", json=body) for u in urls]
                return [r.headers["x-prompt-version"] for r in answers]

            assert await versions() == ["1", "1"]
            clean_fake.add_prompt("pk", "sk", "greet", "Hello v2")
            assert await versions() == ["1", "1"]  # cached
            delivery = payload(project="project-pk")
            response = await client.post(
                f"{one}/webhooks/langfuse",
                content=delivery,
                headers={SIGNATURE_HEADER: sign(delivery, SECRET)},
            )
            assert response.status_code == 200
            with anyio.fail_after(1.0):
                while await versions() != ["2", "2"]:  # noqa: ASYNC110 (state changed by other tasks and threads)
                    await anyio.sleep(0.01)


def _gateway(langfuse_url: str, redis_url: str) -> Any:
    registry = LangfuseRegistry("pk", "sk", base_url=langfuse_url)
    middleware = PromptMiddleware(CaptureApp(), registry, cache_ttl=600)
    assert isinstance(middleware.registry, CachedRegistry)
    coherence = Coherence(middleware.registry, webhook_secrets=[SECRET], redis_url=redis_url)
    return running_server(coherence.wrap(middleware))


async def test_no_sharing_until_the_project_is_known(redis_server: RedisServer) -> None:
    registry = Counting()
    workers = [
        Coherence(CachedRegistry(registry, ttl=600), redis_url=redis_server.url, shared_cache=True)
        for _ in range(2)
    ]
    async with running(*workers):
        await eventually(lambda: all(up(w) for w in workers))
        for w in workers:
            await w.cache.get_prompt("greet")
    assert registry.calls == 2  # each asked the registry: a webhook's scope could not be matched
    assert workers[1].stats.shared_hits == 0


async def test_the_password_is_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "prompt_middleware")
    url = f"redis://:pw-s3cret@127.0.0.1:{free_port()}/0"
    coherence = worker(url)
    assert "s3cret" not in repr(coherence)
    async with running(coherence):
        await eventually(
            lambda: coherence.stats.redis is not None and coherence.stats.redis.errors >= 2
        )
        await coherence.invalidate("greet")  # queued, Redis being down
    assert "unreachable" in caplog.text
    assert "s3cret" not in caplog.text


async def test_redis_refusing_writes_is_retried_with_backoff(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """As after a failover to a replica: subscribed still, every write refused (READONLY)."""
    a, b = worker(redis_server.url), worker(redis_server.url)
    caplog.set_level(logging.WARNING, LOGGER)
    admin = coredis.Redis.from_url(redis_server.url, decode_responses=True)
    async with running(a, b), admin:
        await eventually(lambda: up(a) and up(b))
        await a.cache.get_prompt("greet")
        await b.cache.get_prompt("greet")
        await admin.replicaof("127.0.0.1", 1)  # a master that does not exist
        try:
            with anyio.fail_after(2):  # answered at once all the same
                response = await signed(a.webhook_app, payload(delivery="read-only"))
            assert response.status_code == 200
            assert a.cache.stats.entries == 0
            await anyio.sleep(1.0)
            assert b.cache.stats.entries == 1  # the publish has not gone out yet
            assert a.stats.redis is not None
            # Backing off between attempts: a loop retrying at once made thousands a second.
            assert a.stats.redis.errors < 50
        finally:
            await admin.replicaof()  # NO ONE: writable again
        await eventually(lambda: b.cache.stats.entries == 0)
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("commands fail" in w for w in warnings) == 1
    assert sum("takes commands again" in w for w in warnings) == 1


async def test_a_paused_redis_holds_up_nothing(redis_server: RedisServer) -> None:
    """Redis frozen (connections open, nothing answered, as when a peer dies silently): a
    webhook is still answered well within Langfuse's 10 s, requests are served, the subscriber
    notices by its keepalive PING, and the invalidation arrives once Redis answers again."""
    registry = Counting()
    options: dict[str, Any] = {"redis_timeout": 0.2, "redis_keepalive": 1.0}
    a = worker(redis_server.url, registry, **options)
    b = worker(redis_server.url, registry, **options)
    async with running(a, b):
        await eventually(lambda: up(a) and up(b))
        await a.cache.get_prompt("greet")
        await b.cache.get_prompt("greet")
        redis_server.pause()
        try:
            registry.version = 2
            with anyio.fail_after(10):
                response = await signed(a.webhook_app, payload(delivery="paused"))
            assert response.status_code == 200
            assert (await a.cache.get_prompt("greet")).prompt == "v2"
            assert (await b.cache.get_prompt("greet")).prompt == "v1"  # from its own cache
            await eventually(lambda: not up(b))  # the keepalive PING went unanswered
        finally:
            redis_server.resume()
        await eventually(lambda: up(a) and up(b))
        await eventually(lambda: b.cache.stats.entries == 0)
        assert (await b.cache.get_prompt("greet")).prompt == "v2"
    assert b.stats.redis is not None
    assert b.stats.redis.outages == 1
