"""CachedRegistry: TTL, single-flight, stale-while-revalidate, stale-if-error, negative cache."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from prompt_middleware.core.errors import (
    InvalidPrompt,
    PromptMiddlewareError,
    PromptNotFound,
    RegistryAuthError,
    RegistryUnavailable,
)
from prompt_middleware.core.prompts import Prompt
from prompt_middleware.registries.base import PromptRegistry
from prompt_middleware.registries.cache import CachedRegistry, CacheStats
from prompt_middleware.registries.memory import InMemoryRegistry

pytestmark = pytest.mark.anyio

TTL = 60.0
LOGGER = "prompt_middleware.cache"


def make_prompt(name: str = "greet", version: int = 1, text: str = "Hello") -> Prompt:
    return Prompt(name=name, version=version, type="text", prompt=text, labels=("production",))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeRegistry:
    """Counts calls; can block every call until released, or raise on demand."""

    def __init__(self, *prompts: Prompt) -> None:
        self.inner = InMemoryRegistry(prompts)
        self.calls: list[tuple[str, int | None, str | None]] = []
        self.returned = 0
        self._returned_event: anyio.Event | None = None
        self.error: BaseException | None = None
        self.gate: anyio.Event | None = None
        self.closed = False

    def block(self) -> None:
        self.gate = anyio.Event()

    def release(self) -> None:
        assert self.gate is not None
        self.gate.set()
        self.gate = None

    def replace(self, *prompts: Prompt) -> None:
        self.inner = InMemoryRegistry(prompts)

    async def get_prompt(
        self, name: str, *, version: int | None = None, label: str | None = None
    ) -> Prompt:
        self.calls.append((name, version, label))
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.error is not None:
                raise self.error
            return await self.inner.get_prompt(name, version=version, label=label)
        finally:
            self.returned += 1
            if self._returned_event is not None:
                self._returned_event.set()

    async def wait_returned(self, n: int) -> None:
        """Wait until `n` calls have returned or raised."""
        while self.returned < n:
            self._returned_event = anyio.Event()
            await self._returned_event.wait()

    async def aclose(self) -> None:
        self.closed = True


async def eventually(predicate: Callable[[], bool]) -> None:
    """Let other tasks run (no wall-clock sleeping) until `predicate` holds."""
    for _ in range(1000):
        if predicate():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("condition never became true")


async def let_others_run() -> None:
    for _ in range(20):
        await anyio.lowlevel.checkpoint()


def get_now(cache: PromptRegistry, name: str = "greet", **kwargs: Any) -> Prompt:
    """Run get_prompt without letting it suspend: it must complete in a single step."""
    coro = cache.get_prompt(name, **kwargs)
    with pytest.raises(StopIteration) as done:
        coro.send(None)
    result: Prompt = done.value.value
    return result


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry(make_prompt())


@pytest.fixture
def cache(registry: FakeRegistry, clock: FakeClock) -> CachedRegistry:
    return CachedRegistry(registry, ttl=TTL, clock=clock)


async def fill(cache: CachedRegistry, name: str = "greet", **kwargs: Any) -> Prompt:
    return await cache.get_prompt(name, **kwargs)


# --- fresh hits and keys ---------------------------------------------------------------------


async def test_fresh_hit_makes_no_call_and_never_suspends(
    cache: CachedRegistry, registry: FakeRegistry, clock: FakeClock
) -> None:
    first = await fill(cache)
    clock.advance(TTL - 0.001)
    assert get_now(cache) is first
    assert len(registry.calls) == 1
    assert cache.stats.hits == 1
    assert cache.stats.misses == 1


async def test_no_version_or_label_means_production(
    cache: CachedRegistry, registry: FakeRegistry
) -> None:
    await fill(cache)
    await fill(cache, label="production")
    assert registry.calls == [("greet", None, "production")]
    await fill(cache, version=1)
    await fill(cache, label="latest")
    assert registry.calls[1:] == [("greet", 1, None), ("greet", None, "latest")]
    assert cache.stats.entries == 3


async def test_tenants_have_separate_entries_and_registries(
    cache: CachedRegistry, registry: FakeRegistry
) -> None:
    one = FakeRegistry(make_prompt(text="tenant one"))
    two = FakeRegistry(make_prompt(text="tenant two"))
    p1 = await cache.for_tenant("t1", one).get_prompt("greet")
    p2 = await cache.for_tenant("t2", two).get_prompt("greet")
    assert (p1.prompt, p2.prompt) == ("tenant one", "tenant two")
    assert await cache.for_tenant("t1", one).get_prompt("greet") is p1
    assert (await fill(cache)).prompt == "Hello"
    assert len(one.calls) == len(two.calls) == len(registry.calls) == 1
    assert cache.stats.entries == 3


async def test_refresh_uses_the_tenants_registry(
    cache: CachedRegistry, registry: FakeRegistry, clock: FakeClock
) -> None:
    tenant = FakeRegistry(make_prompt(text="v1"))
    await cache.for_tenant("t", tenant).get_prompt("greet")
    tenant.replace(make_prompt(version=2, text="v2"))
    clock.advance(TTL)
    assert get_now(cache.for_tenant("t", tenant)).prompt == "v1"
    await eventually(lambda: tenant.returned == 2)
    assert (await cache.for_tenant("t", tenant).get_prompt("greet")).prompt == "v2"
    assert registry.calls == []


# --- single-flight -----------------------------------------------------------------------------


async def gather(n: int, call: Callable[[], Awaitable[Any]]) -> list[Any]:
    """Run `call` n times concurrently; each result is the value or the exception raised."""
    results: list[Any] = [None] * n

    async def one(i: int) -> None:
        try:
            results[i] = await call()
        except Exception as exc:
            results[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return results


async def test_single_flight_many_callers_one_call(
    cache: CachedRegistry, registry: FakeRegistry
) -> None:
    registry.block()
    n = 300
    async with anyio.create_task_group() as tg:
        results: list[list[Any]] = []

        async def run() -> None:
            results.append(await gather(n, lambda: fill(cache)))

        tg.start_soon(run)
        await eventually(lambda: cache.stats.misses == n and len(registry.calls) == 1)
        registry.release()
    (prompts,) = results
    assert all(p is prompts[0] for p in prompts)
    assert isinstance(prompts[0], Prompt)
    assert len(registry.calls) == 1
    assert cache.stats == CacheStats(
        hits=0,
        misses=n,
        stale_served=0,
        refreshes=0,
        fetches=1,
        fetch_errors=0,
        not_found=0,
        evictions=0,
        entries=1,
    )


async def test_single_flight_error_reaches_every_waiter_and_is_not_cached(
    cache: CachedRegistry, registry: FakeRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    registry.block()
    registry.error = ConnectionError("token=sk-secret refused")
    async with anyio.create_task_group() as tg:
        results: list[list[Any]] = []

        async def run() -> None:
            results.append(await gather(50, lambda: fill(cache)))

        tg.start_soon(run)
        await eventually(lambda: cache.stats.misses == 50 and len(registry.calls) == 1)
        registry.release()
    (errors,) = results
    assert all(isinstance(e, RegistryUnavailable) for e in errors)
    assert all(e is errors[0] for e in errors)
    message = errors[0].message
    assert "'greet'" in message
    assert "ConnectionError" in message
    assert "sk-secret" not in message
    assert len(registry.calls) == 1
    logged = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert cache.stats.fetch_errors == 1
    assert cache.stats.entries == 0

    registry.error = None  # errors are not cached: the next call asks again
    assert (await fill(cache)).version == 1
    assert len(registry.calls) == 2


@pytest.mark.parametrize(
    "error", [RegistryAuthError("bad key"), InvalidPrompt("broken"), RegistryUnavailable("down")]
)
async def test_library_errors_propagate_unchanged(
    cache: CachedRegistry, registry: FakeRegistry, error: PromptMiddlewareError
) -> None:
    registry.error = error
    with pytest.raises(type(error)) as raised:
        await fill(cache)
    assert raised.value is error


async def test_cancelled_waiter_does_not_cancel_the_fetch(
    cache: CachedRegistry, registry: FakeRegistry
) -> None:
    registry.block()
    got: list[Prompt] = []
    async with anyio.create_task_group() as tg:
        first = anyio.CancelScope()

        async def cancelled_caller() -> None:
            with first:
                await fill(cache)
            got.append(make_prompt(name="cancelled-marker"))

        async def caller() -> None:
            got.append(await fill(cache))

        tg.start_soon(cancelled_caller)  # the one whose miss starts the fetch
        await eventually(lambda: len(registry.calls) == 1)
        tg.start_soon(caller)
        await eventually(lambda: cache.stats.misses == 2)
        first.cancel()
        await eventually(lambda: len(got) == 1)
        assert got[0].name == "cancelled-marker"
        assert first.cancelled_caught
        registry.release()
    assert got[1].name == "greet"
    assert len(registry.calls) == 1
    assert get_now(cache) is got[1]  # stored despite the first caller's cancellation


async def test_fetch_completes_when_its_only_waiter_is_cancelled(
    cache: CachedRegistry, registry: FakeRegistry
) -> None:
    registry.block()
    with anyio.move_on_after(0) as scope:
        await fill(cache)
    assert scope.cancelled_caught
    await eventually(lambda: len(registry.calls) == 1)
    registry.release()
    await eventually(lambda: cache.stats.entries == 1)
    assert get_now(cache).name == "greet"
    assert len(registry.calls) == 1


# --- stale-while-revalidate --------------------------------------------------------------------


class SpyTaskGroup:
    """Records what is started in a real task group."""

    def __init__(self, tg: anyio.abc.TaskGroup) -> None:
        self.tg = tg
        self.started = 0

    def start_soon(self, func: Any, *args: Any, name: object = None) -> None:
        self.started += 1
        self.tg.start_soon(func, *args, name=name)


@pytest.mark.parametrize("with_task_group", [True, False], ids=["task-group", "fallback"])
async def test_stale_served_at_once_with_exactly_one_refresh(
    cache: CachedRegistry, registry: FakeRegistry, clock: FakeClock, with_task_group: bool
) -> None:
    old = await fill(cache)
    async with anyio.create_task_group() as tg:
        spy = SpyTaskGroup(tg)
        if with_task_group:
            cache.set_task_group(spy)  # type: ignore[arg-type]
        registry.replace(make_prompt(version=2, text="new"))
        registry.block()
        clock.advance(TTL)
        assert get_now(cache) is old  # returned without waiting for the refresh
        assert get_now(cache) is old
        await eventually(lambda: len(registry.calls) == 2)
        assert get_now(cache) is old  # refresh still blocked: still stale, no second refresh
        assert len(registry.calls) == 2
        assert spy.started == (1 if with_task_group else 0)
        registry.release()
        await eventually(lambda: registry.returned == 2)
        fresh = get_now(cache)
        assert (fresh.version, fresh.prompt) == (2, "new")
        cache.set_task_group(None)
    stats = cache.stats
    assert (stats.stale_served, stats.refreshes, stats.fetches, stats.hits) == (3, 1, 2, 1)


async def test_closed_task_group_falls_back(
    cache: CachedRegistry, registry: FakeRegistry, clock: FakeClock
) -> None:
    await fill(cache)
    async with anyio.create_task_group() as tg:
        cache.set_task_group(tg)
    # lifespan ended without set_task_group(None)
    registry.replace(make_prompt(version=2))
    clock.advance(TTL)
    assert get_now(cache).version == 1
    await eventually(lambda: registry.returned == 2)
    assert get_now(cache).version == 2


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_refresh_task_cancelled_before_it_starts_leaves_nothing_stuck(
    cache: CachedRegistry, registry: FakeRegistry, clock: FakeClock
) -> None:
    import asyncio

    old = await fill(cache)
    clock.advance(TTL)
    assert get_now(cache) is old  # spawns the refresh
    (task,) = [t for t in asyncio.all_tasks() if t.get_name() == "prompt_middleware.cache fetch"]
    task.cancel()  # before its first step, as a loop that shuts down does
    await eventually(task.done)
    await let_others_run()  # its done-callbacks
    assert len(registry.calls) == 1  # the refresh never ran
    assert get_now(cache) is old  # so the next stale hit starts another
    await eventually(lambda: registry.returned == 2)
    assert cache.stats.refreshes == 2


async def test_failing_background_refresh_is_logged_and_harmless(
    cache: CachedRegistry,
    registry: FakeRegistry,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    old = await fill(cache)
    registry.error = RuntimeError("boom")
    clock.advance(TTL)
    assert get_now(cache) is old  # on trio a leaked exception would crash the run
    await eventually(lambda: registry.returned == 2)
    assert cache.stats.fetch_errors == 1
    (record,) = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
    assert record.levelno == logging.WARNING
    assert "stale" in record.getMessage()
    assert record.exc_info is not None  # unexpected error: traceback kept
    assert get_now(cache) is old


# --- stale-if-error ----------------------------------------------------------------------------


async def test_stale_if_error_within_max_stale_then_unavailable(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    cache = CachedRegistry(registry, ttl=TTL, max_stale=100.0, negative_ttl=0, clock=clock)
    old = await fill(cache)
    registry.error = RegistryUnavailable("down")
    clock.advance(TTL + 99)
    assert get_now(cache) is old
    await eventually(lambda: registry.returned == 2)
    assert get_now(cache) is old
    await eventually(lambda: registry.returned == 3)
    clock.advance(1)  # now past ttl + max_stale: no longer served
    with pytest.raises(RegistryUnavailable):
        await fill(cache)
    assert cache.stats.stale_served == 2
    assert cache.stats.fetch_errors == 3


async def test_default_max_stale_is_24_hours(registry: FakeRegistry, clock: FakeClock) -> None:
    cache = CachedRegistry(registry, ttl=TTL, clock=clock)
    old = await fill(cache)
    registry.error = RegistryUnavailable("down")
    clock.advance(TTL + 24 * 3600 - 1)
    assert get_now(cache) is old
    await eventually(lambda: registry.returned == 2)
    clock.advance(1)
    with pytest.raises(RegistryUnavailable):
        await fill(cache)


async def test_max_stale_none_serves_forever(registry: FakeRegistry, clock: FakeClock) -> None:
    cache = CachedRegistry(registry, ttl=TTL, max_stale=None, clock=clock)
    old = await fill(cache)
    registry.error = OSError("down")
    clock.advance(10**9)
    assert get_now(cache) is old
    await eventually(lambda: registry.returned == 2)
    assert get_now(cache) is old


async def test_one_warning_per_failure_streak(
    registry: FakeRegistry, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cache = CachedRegistry(registry, ttl=TTL, negative_ttl=0, clock=clock)
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    await fill(cache)

    def warnings() -> int:
        return sum(r.name == LOGGER and r.levelno == logging.WARNING for r in caplog.records)

    registry.error = RegistryUnavailable("down")
    clock.advance(TTL)
    for n in range(2, 5):  # three failed refreshes, one streak
        get_now(cache)
        await eventually(lambda n=n: registry.returned == n)  # type: ignore[misc]
    assert warnings() == 1
    assert cache.stats.fetch_errors == 3

    registry.error = None  # streak ends
    get_now(cache)
    await eventually(lambda: registry.returned == 5)
    assert any("answers again" in r.getMessage() for r in caplog.records)

    registry.error = RegistryUnavailable("down again")
    clock.advance(TTL)
    get_now(cache)
    await eventually(lambda: registry.returned == 6)
    assert warnings() == 2


async def test_failed_refresh_waits_negative_ttl_before_retrying(
    cache: CachedRegistry, registry: FakeRegistry, clock: FakeClock
) -> None:
    old = await fill(cache)
    registry.error = RegistryUnavailable("down")
    clock.advance(TTL)
    get_now(cache)
    await eventually(lambda: registry.returned == 2)
    clock.advance(4.9)
    assert get_now(cache) is old
    await let_others_run()
    assert len(registry.calls) == 2  # no hammering of a failing registry
    clock.advance(0.1)
    get_now(cache)
    await eventually(lambda: registry.returned == 3)
    assert cache.stats.refreshes == 2


async def test_fetch_timeout_without_and_with_stale_entry(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    cache = CachedRegistry(registry, ttl=TTL, fetch_timeout=0.01, clock=clock)
    registry.block()
    with anyio.fail_after(5), pytest.raises(RegistryUnavailable, match="timed out"):
        await fill(cache)
    registry.release()
    old = await fill(cache)
    registry.block()
    clock.advance(TTL)
    assert get_now(cache) is old
    with anyio.fail_after(5):
        await registry.wait_returned(3)
    assert cache.stats.fetch_errors == 2
    assert get_now(cache) is old
    registry.release()


# --- negative cache ----------------------------------------------------------------------------


async def test_not_found_is_cached_for_negative_ttl(
    cache: CachedRegistry, registry: FakeRegistry, clock: FakeClock
) -> None:
    for _ in range(3):
        with pytest.raises(PromptNotFound):
            await fill(cache, "nope")
    assert len(registry.calls) == 1
    clock.advance(5.0)
    with pytest.raises(PromptNotFound):
        await fill(cache, "nope")
    assert len(registry.calls) == 2
    assert (cache.stats.not_found, cache.stats.hits, cache.stats.misses) == (2, 2, 2)


async def test_negative_ttl_zero_disables_negative_cache(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    cache = CachedRegistry(registry, negative_ttl=0, clock=clock)
    for _ in range(2):
        with pytest.raises(PromptNotFound):
            await fill(cache, "nope")
    assert len(registry.calls) == 2
    assert cache.stats.entries == 0


@pytest.mark.parametrize("negative_ttl", [5.0, 0.0])
async def test_refresh_not_found_evicts_the_entry(
    registry: FakeRegistry, clock: FakeClock, negative_ttl: float
) -> None:
    cache = CachedRegistry(registry, ttl=TTL, negative_ttl=negative_ttl, clock=clock)
    await fill(cache)
    registry.replace()  # deleted upstream
    clock.advance(TTL)
    assert get_now(cache).name == "greet"
    await eventually(lambda: registry.returned == 2)
    assert cache.stats.entries == (1 if negative_ttl else 0)
    with pytest.raises(PromptNotFound):
        await fill(cache)
    assert len(registry.calls) == (2 if negative_ttl else 3)


# --- size bound and invalidation ---------------------------------------------------------------


async def test_lru_bound_and_evictions(registry: FakeRegistry, clock: FakeClock) -> None:
    registry.replace(*(make_prompt(name=n) for n in "abc"))
    cache = CachedRegistry(registry, max_size=2, clock=clock)
    await fill(cache, "a")
    await fill(cache, "b")
    await fill(cache, "a")  # a is now the most recently used
    await fill(cache, "c")  # evicts b
    assert (cache.stats.entries, cache.stats.evictions) == (2, 1)
    assert len(registry.calls) == 3
    get_now(cache, "a")
    get_now(cache, "c")
    assert len(registry.calls) == 3
    await fill(cache, "b")  # a miss again; evicts a
    assert len(registry.calls) == 4
    assert (cache.stats.entries, cache.stats.evictions) == (2, 2)


async def test_invalidate_exact_name_all_and_tenant(
    cache: CachedRegistry, registry: FakeRegistry
) -> None:
    registry.replace(make_prompt(name="a"), make_prompt(name="ab"))
    keys = [("a", ""), ("ab", ""), ("a", "t1"), ("a", "t2")]

    async def cached() -> set[tuple[str, str]]:
        """The keys answered without a registry call; the others are fetched again."""
        found = set()
        for name, tenant in keys:
            before = len(registry.calls)
            await cache.for_tenant(tenant, registry).get_prompt(name)
            if len(registry.calls) == before:
                found.add((name, tenant))
        return found

    assert await cached() == set()
    assert await cached() == set(keys)
    cache.invalidate("a")  # exact: not "ab"; every tenant
    assert await cached() == {("ab", "")}
    cache.invalidate(tenant="t1")
    assert await cached() == {("a", ""), ("ab", ""), ("a", "t2")}
    cache.invalidate("a", tenant="t2")
    assert await cached() == {("a", ""), ("ab", ""), ("a", "t1")}
    cache.invalidate()
    assert cache.stats.entries == 0
    assert await cached() == set()


async def test_invalidate_during_fetch_does_not_store_the_old_result(
    cache: CachedRegistry, registry: FakeRegistry
) -> None:
    registry.block()
    got: list[Prompt] = []
    async with anyio.create_task_group() as tg:

        async def caller() -> None:
            got.append(await fill(cache))

        tg.start_soon(caller)
        await eventually(lambda: len(registry.calls) == 1)
        cache.invalidate("greet")
        registry.release()
    assert got[0].name == "greet"  # the waiter still gets its answer
    assert cache.stats.entries == 0
    await fill(cache)
    assert len(registry.calls) == 2


# --- lifecycle, stats, arguments ---------------------------------------------------------------


async def test_aclose_cancels_fetches_and_closes_registry(
    cache: CachedRegistry, registry: FakeRegistry
) -> None:
    registry.block()
    errors: list[Exception] = []
    async with anyio.create_task_group() as tg:

        async def caller() -> None:
            try:
                await fill(cache)
            except RegistryUnavailable as exc:
                errors.append(exc)

        tg.start_soon(caller)
        await eventually(lambda: len(registry.calls) == 1)
        await cache.aclose()
    assert registry.closed
    assert len(errors) == 1
    assert "cancelled" in str(errors[0])
    registry.release()
    assert (await fill(cache)).name == "greet"  # nothing stuck in flight


async def test_stats_snapshot(
    cache: CachedRegistry, registry: FakeRegistry, clock: FakeClock
) -> None:
    await fill(cache)  # miss, fetch
    await fill(cache)  # hit
    with pytest.raises(PromptNotFound):
        await fill(cache, "nope")  # miss, fetch, not_found
    with pytest.raises(PromptNotFound):
        await fill(cache, "nope")  # hit (negative)
    clock.advance(TTL)
    get_now(cache)  # stale_served, refresh, fetch
    await eventually(lambda: registry.returned == 3)
    stats = cache.stats
    assert stats == CacheStats(
        hits=2,
        misses=2,
        stale_served=1,
        refreshes=1,
        fetches=3,
        fetch_errors=0,
        not_found=1,
        evictions=0,
        entries=2,  # the expired negative entry stays until replaced or evicted
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.hits = 0  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ttl": -1},
        {"negative_ttl": -1},
        {"max_stale": -1},
        {"max_size": 0},
        {"fetch_timeout": 0},
    ],
)
def test_rejects_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        CachedRegistry(InMemoryRegistry(), **kwargs)


# --- refused keys, the negative bound (issue #16) -------------------------------------------


async def test_refused_keys_during_a_stale_refresh_end_the_tenants_entries(
    registry: FakeRegistry, clock: FakeClock
) -> None:
    registry.replace(make_prompt(), make_prompt("other"))
    cache = CachedRegistry(registry, ttl=TTL, negative_ttl=5.0, clock=clock)
    revoked = cache.for_tenant("tenant-a", registry)
    kept = cache.for_tenant("tenant-b", registry)
    for view in (revoked, kept):
        await view.get_prompt("greet")
        await view.get_prompt("other")
    clock.advance(TTL)
    registry.error = RegistryAuthError("Langfuse rejected the API keys (HTTP 401).")
    assert get_now(revoked, "greet").name == "greet"  # served stale while it is refreshed
    await eventually(lambda: cache.stats.fetch_errors == 1)
    calls = len(registry.calls)
    # No stale-if-error for a refusal: neither that prompt nor the tenant's others are served.
    for name in ("greet", "other"):
        with pytest.raises(RegistryAuthError):
            await revoked.get_prompt(name)
    assert len(registry.calls) == calls + 1  # "other" asked; "greet"'s refusal remembered
    with pytest.raises(RegistryAuthError):
        await revoked.get_prompt("greet")
    assert len(registry.calls) == calls + 1
    clock.advance(5.0)  # negative_ttl later, asked again
    with pytest.raises(RegistryAuthError):
        await revoked.get_prompt("greet")
    assert len(registry.calls) == calls + 2
    # Another tenant's stale copies still ride out the failure.
    assert get_now(kept, "greet").name == "greet"


async def test_unknown_names_never_evict_prompts(registry: FakeRegistry, clock: FakeClock) -> None:
    registry.replace(*(make_prompt(f"p{i}") for i in range(4)))
    cache = CachedRegistry(registry, ttl=TTL, max_size=4, clock=clock)  # 1 negative (4 // 8)
    for i in range(4):
        await fill(cache, f"p{i}")
    for i in range(100):
        with pytest.raises(PromptNotFound):
            await fill(cache, f"unknown-{i}")
    assert cache.stats.entries == 5
    assert cache.stats.evictions == 99
    clock.advance(TTL)  # stale now: still there to serve while the registry is down
    registry.error = RegistryUnavailable("down")
    assert [get_now(cache, f"p{i}").name for i in range(4)] == ["p0", "p1", "p2", "p3"]


def test_the_negative_bound_defaults_to_an_eighth_and_must_be_positive(
    registry: FakeRegistry,
) -> None:
    assert CachedRegistry(registry, max_size=1024)._negatives.maxsize == 128
    assert CachedRegistry(registry, max_size=4)._negatives.maxsize == 1
    assert CachedRegistry(registry, negative_max_size=7)._negatives.maxsize == 7
    with pytest.raises(ValueError, match="negative_max_size"):
        CachedRegistry(registry, negative_max_size=0)


class StubbornRegistry:
    """Defers a cancellation until released, as a registry finishing a step it cannot safely
    abandon does (LangfuseRegistry while httpx's pool hands it a connection)."""

    def __init__(self) -> None:
        self.released = anyio.Event()

    async def get_prompt(
        self, name: str, *, version: int | None = None, label: str | None = None
    ) -> Prompt:
        with anyio.CancelScope(shield=True):
            await self.released.wait()
        return make_prompt(name)


async def test_waiters_stop_at_fetch_timeout_even_if_the_registry_defers_cancellation() -> None:
    registry = StubbornRegistry()
    cache = CachedRegistry(registry, fetch_timeout=0.1)
    outcomes: list[str] = []

    async def ask() -> None:
        try:
            await cache.get_prompt("greet")
        except RegistryUnavailable as exc:
            outcomes.append(exc.message)

    try:
        with anyio.fail_after(5):  # generous: the answers come after 0.1 s
            async with anyio.create_task_group() as group:
                for _ in range(3):
                    group.start_soon(ask)
    finally:
        registry.released.set()
        await cache.aclose()
    timed_out = "The prompt registry timed out fetching prompt 'greet' label 'production'."
    assert outcomes == [timed_out] * 3
