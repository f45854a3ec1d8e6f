"""CachedRegistry.invalidate: origins counted, tenants, listeners, what a call drops."""

from __future__ import annotations

from collections.abc import Collection

import pytest

from prompt_middleware.core.prompts import Prompt
from prompt_middleware.registries.cache import INVALIDATION_ORIGINS, CachedRegistry, CacheStats
from prompt_middleware.registries.memory import InMemoryRegistry

pytestmark = pytest.mark.anyio


def registry() -> InMemoryRegistry:
    return InMemoryRegistry(
        [Prompt(name=n, version=1, type="text", prompt=n, labels=("production",)) for n in "ab"]
    )


async def filled() -> CachedRegistry:
    cache = CachedRegistry(registry(), ttl=60)
    other = registry()
    for tenant in ("", "t1", "t2"):
        view = cache if tenant == "" else cache.for_tenant(tenant, other)
        for name in "ab":
            await view.get_prompt(name)
    return cache


async def test_origins_are_counted_and_checked() -> None:
    cache = await filled()
    assert cache.stats.invalidations == dict.fromkeys(INVALIDATION_ORIGINS, 0)
    assert cache.invalidate("a", tenant="t1", origin="webhook") == 1
    assert cache.invalidate("zzz", origin="poll") == 0  # counted even when nothing matched
    assert cache.invalidate(tenant=["t2", ""], origin="pubsub") == 4
    assert cache.invalidate(origin="watch") == 1
    stats = cache.stats
    assert stats.invalidations == {"webhook": 1, "pubsub": 1, "poll": 1, "watch": 1, "api": 0}
    assert stats.invalidated == 6
    assert stats.entries == 0
    with pytest.raises(ValueError, match="origin"):
        cache.invalidate(origin="cron")  # type: ignore[arg-type]
    # Existing comparisons of CacheStats without the new fields keep working.
    fresh = CachedRegistry(registry()).stats
    assert fresh == CacheStats(
        hits=0,
        misses=0,
        stale_served=0,
        refreshes=0,
        fetches=0,
        fetch_errors=0,
        not_found=0,
        evictions=0,
        entries=0,
    )


async def test_listeners_hear_every_invalidation() -> None:
    cache = await filled()
    heard: list[tuple[str | None, str | Collection[str] | None, str]] = []

    def listener(name: str | None, tenant: str | Collection[str] | None, origin: str) -> None:
        heard.append((name, tenant, origin))

    def broken(name: str | None, tenant: str | Collection[str] | None, origin: str) -> None:
        raise RuntimeError("listener bug")

    cache.add_invalidation_listener(broken)
    cache.add_invalidation_listener(listener)
    cache.invalidate("a")  # a failing listener is logged, the others still hear it
    cache.invalidate(tenant="t1", origin="watch")
    cache.remove_invalidation_listener(listener)
    cache.remove_invalidation_listener(listener)  # unknown: ignored
    cache.invalidate()
    assert heard == [("a", None, "api"), (None, "t1", "watch")]


async def test_tenants_seen_with_their_registry() -> None:
    cache = await filled()
    assert sorted(cache.tenants()) == ["t1", "t2"]
