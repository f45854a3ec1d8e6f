"""`CachedRegistry`: a bounded TTL cache in front of a prompt registry.

- A fresh entry is served with no I/O and no await.
- Concurrent misses on one key share one registry call (single-flight).
- An entry older than `ttl` is served at once while one background refresh runs
  (stale-while-revalidate); while the registry fails it keeps being served, for up to `max_stale`
  seconds past its expiry (stale-if-error).
- Not-found answers are remembered for `negative_ttl`, in their own smaller LRU, so unknown
  names never push out the prompts whose stale copies ride out an outage.
- A registry that refuses the keys (Langfuse 401/403, e.g. revoked per-request keys) is not an
  outage: that tenant's entries are dropped at once, stale copies included, and the refusal is
  remembered for `negative_ttl`.
- `invalidate()` drops entries, counted by origin (`INVALIDATION_ORIGINS`); a registry call in
  flight for a dropped entry still answers its waiters but its result is not stored. Listeners
  added with `add_invalidation_listener` hear of every invalidation (the coherence package uses
  this to pass operators' invalidations on to other workers).

Registry calls never run in a request's task: each runs in a background task that requests wait
on, so a cancelled request only stops waiting. The task goes into the task group given to
`set_task_group` (the middleware passes one during ASGI lifespan); without one it is a trio system
task or an asyncio task the cache keeps a reference to, so refreshes work without lifespan too.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Any, Literal

import anyio
import anyio.abc
from cachetools import LRUCache

from .. import observability
from ..core.errors import (
    InvalidPrompt,
    PromptMiddlewareError,
    PromptNotFound,
    RegistryAuthError,
    RegistryUnavailable,
)
from ..core.prompts import DEFAULT_LABEL, Prompt, PromptRef
from .base import PromptRegistry, ensure_prompt
from .fallback import FALLBACK_SOURCE

__all__ = [
    "DEFAULT_MAX_STALE",
    "INVALIDATION_ORIGINS",
    "CacheStats",
    "CachedRegistry",
    "InvalidationListener",
    "InvalidationOrigin",
]

logger = logging.getLogger("prompt_middleware.cache")

DEFAULT_MAX_STALE = 24 * 3600.0
"""Seconds past `ttl` a stale entry may still be served, while refreshed or failing: 24 h."""

_Key = tuple[str, str, int | None, str | None]  # tenant, name, version, effective label
InvalidationOrigin = Literal["webhook", "pubsub", "poll", "watch", "api"]
INVALIDATION_ORIGINS: tuple[InvalidationOrigin, ...] = ("webhook", "pubsub", "poll", "watch", "api")
"""Where an invalidation came from: a Langfuse webhook, another worker (through Redis), the
poller, a file watcher, or a direct call."""
InvalidationListener = Callable[
    [str | None, "str | Collection[str] | None", InvalidationOrigin], None
]
"""Called as `listener(name, tenant, origin)` after each `invalidate()`; must not block."""
_Job = Callable[[], Coroutine[Any, Any, None]]
_TASK_NAME = "prompt_middleware.cache fetch"


def _zero_origins() -> dict[str, int]:
    return dict.fromkeys(INVALIDATION_ORIGINS, 0)


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters since the cache was created, and its current size.

    Every `get_prompt` call counts as exactly one of `hits`, `stale_served` and `misses`.

    Attributes:
        hits: calls answered from a fresh entry (a prompt or a remembered not-found), no I/O.
        misses: calls that waited for a registry call (started one or joined one in flight).
        stale_served: calls answered at once with an entry older than `ttl`.
        refreshes: background refreshes started for stale entries.
        fetches: registry calls made (refreshes included; waiters sharing one count once).
        fetch_errors: registry calls that failed or timed out (not-found is not an error).
        not_found: registry calls that answered `PromptNotFound`.
        evictions: entries dropped to stay within `max_size`, least recently used first.
        entries: entries held now, prompts and remembered not-founds alike.
        invalidations: `invalidate()` calls per origin (every origin listed, 0 if none).
        invalidated: entries dropped by `invalidate()`, plus registry calls in flight whose
            result it kept from being stored.
    """

    hits: int
    misses: int
    stale_served: int
    refreshes: int
    fetches: int
    fetch_errors: int
    not_found: int
    evictions: int
    entries: int
    invalidations: Mapping[str, int] = field(default_factory=_zero_origins)
    invalidated: int = 0


class _Entry:
    __slots__ = ("fresh_until", "retry_at", "stale_until", "value")

    def __init__(
        self,
        value: Prompt | PromptNotFound | RegistryAuthError,
        fresh_until: float,
        stale_until: float,
    ) -> None:
        self.value = value
        self.fresh_until = fresh_until
        self.stale_until = stale_until
        self.retry_at = -math.inf  # no refresh before this; set after a failed refresh


class _Flight:
    """One registry call in progress; requests wait on `done`, then read `result`."""

    __slots__ = ("discarded", "done", "result", "scope", "traceback")

    def __init__(self, key: _Key) -> None:
        self.done = anyio.Event()
        self.scope = anyio.CancelScope()
        self.discarded = False  # invalidated while in flight: the result is not stored
        self.result: Prompt | Exception = RegistryUnavailable(
            f"Fetching {_ref(key)} was cancelled."
        )
        self.traceback: TracebackType | None = None

    def settle(self, result: Prompt | Exception) -> None:
        self.result = result
        if isinstance(result, Exception):
            self.traceback = result.__traceback__


class _LRU(OrderedDict[_Key, _Entry]):
    """Entries, least recently used first; storing one past `maxsize` drops the first.

    Read with `use`, which marks the entry used; `in`, `pop` and iteration do not. (An
    OrderedDict rather than cachetools' LRUCache: a warm hit is then two C calls, not two Python
    frames.)
    """

    evictions = 0

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = maxsize

    def __setitem__(self, key: _Key, value: _Entry) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        if len(self) > self.maxsize:
            self.popitem(last=False)
            self.evictions += 1

    def use(self, key: _Key) -> _Entry | None:
        entry = self.get(key)
        if entry is not None:
            self.move_to_end(key)
        return entry


class CachedRegistry:
    """A `PromptRegistry` that caches another one. See the module docstring for the behaviour.

    Args:
        registry: the registry to cache (public as `.registry`).
        ttl: seconds an entry is fresh; after that it is served stale while it is refreshed.
        max_size: most prompts held; least recently used go first.
        negative_ttl: seconds a not-found answer (or a refusal of the keys) is remembered, and
            the pause before retrying a failed background refresh. 0 disables both.
        negative_max_size: most not-found answers and refusals remembered, in their own LRU so
            that unknown names never evict prompts (default: `max_size // 8`, at least 1).
        max_stale: seconds past `ttl` an entry may still be served (default 24 h); after that
            a request waits for the registry like a miss. None: no limit.
        fetch_timeout: seconds a registry call may take before it counts as failed. None: none.
        clock: monotonic clock in seconds, injectable for tests.
    """

    def __init__(
        self,
        registry: PromptRegistry,
        *,
        ttl: float = 60.0,
        max_size: int = 1024,
        negative_ttl: float = 5.0,
        max_stale: float | None = DEFAULT_MAX_STALE,
        fetch_timeout: float | None = 10.0,
        negative_max_size: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < 0 or negative_ttl < 0 or (max_stale is not None and max_stale < 0):
            raise ValueError("ttl, negative_ttl and max_stale must not be negative")
        if max_size < 1 or (negative_max_size is not None and negative_max_size < 1):
            raise ValueError("max_size and negative_max_size must be at least 1")
        if fetch_timeout is not None and fetch_timeout <= 0:
            raise ValueError("fetch_timeout must be positive or None")
        self.registry = registry
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._max_stale = math.inf if max_stale is None else max_stale
        self._fetch_timeout = fetch_timeout
        self._clock = clock
        self._entries = _LRU(max_size)  # prompts
        # Remembered refusals (not found, keys refused), apart: unknown names cannot evict the
        # prompts whose stale copies ride out an outage.
        self._negatives = _LRU(negative_max_size or max(1, max_size // 8))
        self._inflight: dict[_Key, _Flight] = {}
        self._running: set[_Flight] = set()
        self._failing: LRUCache[_Key, None] = LRUCache(max_size)  # keys in a failure streak
        self._task_group: anyio.abc.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._hits = self._misses = self._stale_served = self._refreshes = 0
        self._fetches = self._fetch_errors = self._not_found = 0
        self._invalidations = _zero_origins()
        self._invalidated = 0
        self._listeners: list[InvalidationListener] = []
        # Per-request registries seen, by tenant, so invalidations can be mapped to tenants.
        self._sources: LRUCache[str, PromptRegistry] = LRUCache(max_size)

    async def get_prompt(
        self, name: str, *, version: int | None = None, label: str | None = None
    ) -> Prompt:
        """The prompt, from the cache when possible."""
        return await self._get(("", name, version, _label(version, label)), self.registry)

    def fresh_prompt(
        self, name: str, *, version: int | None = None, label: str | None = None
    ) -> Prompt | None:
        """The prompt if a fresh entry holds it, counted as the hit `get_prompt` would count;
        else None, counting nothing (`get_prompt` then answers). No await: the middleware's
        warm path asks this first."""
        # `_label(version, label)`, written out: this is the warm path's one call into the cache.
        key = ("", name, version, DEFAULT_LABEL if version is None and label is None else label)
        entries = self._entries
        entry = entries.get(key)
        if entry is None or self._clock() >= entry.fresh_until:
            return None
        value = entry.value
        if not isinstance(value, Prompt):
            return None
        entries.move_to_end(key)
        self._hits += 1
        if observability.active is not None:
            observability.active.cache_lookup("hit")
        return value

    def for_tenant(self, tenant: str, registry: PromptRegistry) -> PromptRegistry:
        """A registry that serves `registry`'s prompts through this cache, keyed by `tenant`
        (e.g. per-request credentials), apart from every other tenant's."""
        return _TenantView(self, tenant, registry)

    async def _get(self, key: _Key, registry: PromptRegistry) -> Prompt:
        entry = self._entries.use(key)
        if entry is None:
            entry = self._negatives.use(key)
        if entry is not None:
            now = self._clock()
            if now < entry.fresh_until:
                self._hits += 1
                if observability.active is not None:
                    hit = isinstance(entry.value, Prompt)
                    observability.active.cache_lookup("hit" if hit else "negative_hit")
                if isinstance(entry.value, Prompt):
                    return entry.value
                raise entry.value.with_traceback(None)
            if isinstance(entry.value, Prompt) and now < entry.stale_until:
                self._stale_served += 1
                if observability.active is not None:
                    observability.active.cache_lookup("stale")
                if now >= entry.retry_at and key not in self._inflight:
                    self._refreshes += 1
                    self._start_fetch(key, registry)
                return entry.value
        self._misses += 1
        if observability.active is not None:
            observability.active.cache_lookup("miss")
        flight = self._inflight.get(key)
        if flight is None:
            flight = self._start_fetch(key, registry)
            await self._wait_as_starter(key, flight)
        else:
            await flight.done.wait()
        if isinstance(flight.result, Prompt):
            return flight.result
        raise flight.result.with_traceback(flight.traceback)

    async def _wait_as_starter(self, key: _Key, flight: _Flight) -> None:
        """Wait for the call this request started, and end everyone's wait at `fetch_timeout`.

        The call is cancelled at that deadline too, but a registry may defer a cancellation
        (LangfuseRegistry does while httpx's pool hands it a connection): its waiters are then
        answered at the deadline anyway, and the late call is left to end alone (its prompt
        is still stored). One timer per call, not per waiter: a cancel scope costs
        microseconds, thousands of waiters on one cold prompt would pay it each.
        """
        if self._fetch_timeout is None:
            await flight.done.wait()
            return
        with anyio.move_on_after(self._fetch_timeout):
            await flight.done.wait()
        if not flight.done.is_set():
            if self._inflight.get(key) is flight:
                del self._inflight[key]
            flight.settle(
                RegistryUnavailable(f"The prompt registry timed out fetching {_ref(key)}.")
            )
            flight.done.set()

    def set_task_group(self, task_group: anyio.abc.TaskGroup | None) -> None:
        """Start registry calls in `task_group` from now on; None: in detached tasks."""
        self._task_group = task_group

    async def aclose(self) -> None:
        """Cancel registry calls in progress, then close the wrapped registry if it can be."""
        self._task_group = None
        running = list(self._running)
        for flight in running:
            flight.scope.cancel()
        for flight in running:
            await flight.done.wait()
        close = getattr(self.registry, "aclose", None)
        if close is not None:
            await close()

    def invalidate(
        self,
        name: str | None = None,
        *,
        tenant: str | Collection[str] | None = None,
        origin: InvalidationOrigin = "api",
    ) -> int:
        """Drop the entries of prompt `name` (exact), or all of them; only `tenant`'s if given
        (one tenant, or a collection of them).

        Registry calls in progress for those entries still answer their waiters, but their
        results are not stored. `origin` says where the invalidation came from (counted in
        `stats.invalidations`). Returns how many entries and calls in flight it dropped.
        """
        if origin not in self._invalidations:
            raise ValueError(f"origin must be one of {', '.join(INVALIDATION_ORIGINS)}")

        tenants = None if tenant is None else {tenant} if isinstance(tenant, str) else set(tenant)

        def matches(key: _Key) -> bool:
            return (tenants is None or key[0] in tenants) and (name is None or key[1] == name)

        dropped = 0
        observability.record_invalidation(origin)
        for entries in (self._entries, self._negatives):
            for key in [k for k in entries if matches(k)]:
                del entries[key]
                dropped += 1
        for key in [k for k in self._inflight if matches(k)]:
            self._inflight.pop(key).discarded = True
            dropped += 1
        self._invalidations[origin] += 1
        self._invalidated += dropped
        for listener in tuple(self._listeners):
            try:
                listener(name, tenant, origin)
            except Exception:
                logger.exception("An invalidation listener failed")
        return dropped

    def add_invalidation_listener(self, listener: InvalidationListener) -> None:
        """Call `listener(name, tenant, origin)` after every `invalidate()` from now on."""
        self._listeners.append(listener)

    def remove_invalidation_listener(self, listener: InvalidationListener) -> None:
        """Stop calling `listener`; unknown listeners are ignored."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def tenants(self) -> dict[str, PromptRegistry]:
        """The tenants seen recently with their own registry (`for_tenant(tenant, registry)`)."""
        return dict(self._sources)

    @property
    def stats(self) -> CacheStats:
        return CacheStats(
            hits=self._hits,
            misses=self._misses,
            stale_served=self._stale_served,
            refreshes=self._refreshes,
            fetches=self._fetches,
            fetch_errors=self._fetch_errors,
            not_found=self._not_found,
            evictions=self._entries.evictions + self._negatives.evictions,
            entries=len(self._entries) + len(self._negatives),
            invalidations=dict(self._invalidations),
            invalidated=self._invalidated,
        )

    def _start_fetch(self, key: _Key, registry: PromptRegistry) -> _Flight:
        if registry is not self.registry:
            self._sources[key[0]] = registry
        flight = _Flight(key)
        # Registered before spawning: an eager task factory may finish the job right away.
        self._inflight[key] = flight
        self._running.add(flight)
        job = partial(self._fetch, key, registry, flight)
        try:
            if self._task_group is not None:
                try:
                    self._task_group.start_soon(job, name=_TASK_NAME)
                    return flight
                except RuntimeError:  # the task group has closed (lifespan is over)
                    self._task_group = None
            task = _spawn_detached(job, self._tasks)
        except BaseException:
            self._finish(key, flight)
            raise
        if task is not None:  # an asyncio task cancelled before it starts never runs `_fetch`
            task.add_done_callback(lambda _: self._finish(key, flight))
        return flight

    async def _fetch(self, key: _Key, registry: PromptRegistry, flight: _Flight) -> None:
        """Call the registry and record the outcome; never raises except to cancel."""
        _, name, version, label = key
        self._fetches += 1
        try:
            with flight.scope:
                try:
                    with observability.fetch_timer(registry), anyio.fail_after(self._fetch_timeout):
                        prompt: object = await registry.get_prompt(
                            name, version=version, label=label
                        )
                except PromptNotFound as exc:
                    self._not_found += 1
                    self._store_not_found(key, flight, exc)
                except RegistryAuthError as exc:
                    self._fetch_errors += 1
                    self._store_auth_failure(key, flight, exc)
                except Exception as exc:
                    self._fetch_errors += 1
                    self._record_failure(key, flight, exc)
                else:
                    try:
                        checked = ensure_prompt(prompt, _ref_of(key))
                    except InvalidPrompt as exc:  # a broken registry; never cached
                        self._fetch_errors += 1
                        self._record_failure(key, flight, exc)
                    else:
                        self._store(key, flight, checked)
        finally:
            self._finish(key, flight)

    def _finish(self, key: _Key, flight: _Flight) -> None:
        self._running.discard(flight)
        if self._inflight.get(key) is flight:
            del self._inflight[key]
        flight.done.set()

    def _store(self, key: _Key, flight: _Flight, prompt: Prompt) -> None:
        if prompt.source == FALLBACK_SOURCE:
            self._store_fallback(key, flight, prompt)
            return
        flight.settle(prompt)
        self._end_streak(key)
        if not flight.discarded:
            expires = self._clock() + self._ttl
            self._negatives.pop(key, None)
            self._entries[key] = _Entry(prompt, expires, expires + self._max_stale)

    def _store_fallback(self, key: _Key, flight: _Flight, prompt: Prompt) -> None:
        """A `FallbackRegistry` answered for a primary that is down: a stale copy from the
        primary is still preferred, and the fallback's copy is fresh only for `negative_ttl`, so
        the primary is asked again soon (in the background while the copy is served)."""
        now = self._clock()
        entry = None if flight.discarded else self._entries.use(key)
        if (
            entry is not None
            and isinstance(entry.value, Prompt)
            and entry.value.source != FALLBACK_SOURCE
            and now < entry.stale_until
        ):
            flight.settle(entry.value)
            entry.retry_at = now + self._negative_ttl
            return
        flight.settle(prompt)
        if not flight.discarded:
            expires = now + min(self._ttl, self._negative_ttl)
            self._negatives.pop(key, None)
            self._entries[key] = _Entry(prompt, expires, expires + self._max_stale)

    def _store_not_found(self, key: _Key, flight: _Flight, exc: PromptNotFound) -> None:
        flight.settle(exc)
        self._end_streak(key)
        if flight.discarded:
            return
        old = self._entries.pop(key, None)
        if old is not None and isinstance(old.value, Prompt):
            logger.info("Dropped %s from the cache: the registry no longer has it", _ref(key))
        self._remember_refusal(key, exc)

    def _store_auth_failure(self, key: _Key, flight: _Flight, exc: RegistryAuthError) -> None:
        """The registry refused the tenant's keys (revoked, say): not an outage to ride out
        with stale copies. Every entry of that tenant goes, and the refusal is remembered for
        `negative_ttl` so a revoked key cannot hammer the registry either."""
        flight.settle(exc)
        tenant = key[0]
        dropped = 0
        for entries in (self._entries, self._negatives):
            for k in [k for k in entries if k[0] == tenant]:
                entry = entries.use(k)
                if entry is not None and not isinstance(entry.value, RegistryAuthError):
                    del entries[k]
                    dropped += 1
        logger.warning(
            "The prompt registry refused the credentials for %s (%s): dropped %d cached"
            " entries of that tenant",
            _ref(key),
            exc.message,
            dropped,
        )
        if not flight.discarded:
            self._remember_refusal(key, exc)

    def _remember_refusal(self, key: _Key, exc: PromptNotFound | RegistryAuthError) -> None:
        if self._negative_ttl > 0:
            expires = self._clock() + self._negative_ttl
            self._negatives[key] = _Entry(exc, expires, expires)

    def _record_failure(self, key: _Key, flight: _Flight, exc: Exception) -> None:
        ref = _ref(key)
        if isinstance(exc, PromptMiddlewareError):
            flight.settle(exc)
            reason = f"{type(exc).__name__}: {exc.message}"
        elif isinstance(exc, TimeoutError):
            reason = f"no answer within {self._fetch_timeout} s"
            flight.settle(RegistryUnavailable(f"The prompt registry timed out fetching {ref}."))
        else:  # the message names only the exception class: its text may hold secrets
            reason = type(exc).__name__
            message = f"The prompt registry failed fetching {ref} ({reason})."
            flight.settle(RegistryUnavailable(message))
        now = self._clock()
        entry = None if flight.discarded else self._entries.use(key)
        servable = entry is not None and isinstance(entry.value, Prompt) and now < entry.stale_until
        if entry is not None and servable:  # retry later: do not hammer a failing registry
            entry.retry_at = now + self._negative_ttl
        if key in self._failing:  # logged when the streak began
            logger.debug("Prompt registry still failing for %s (%s)", ref, reason)
            return
        self._failing[key] = None
        unexpected = None if isinstance(exc, PromptMiddlewareError | TimeoutError) else exc
        if servable:
            logger.warning(
                "Serving a stale copy of %s: registry failed (%s)",
                ref,
                reason,
                exc_info=unexpected,
            )
        else:
            level = logging.WARNING if unexpected is None else logging.ERROR
            logger.log(level, "Could not fetch %s (%s)", ref, reason, exc_info=unexpected)

    def _end_streak(self, key: _Key) -> None:
        if key in self._failing:
            del self._failing[key]
            logger.info("Prompt registry answers again for %s", _ref(key))


def _label(version: int | None, label: str | None) -> str | None:
    return DEFAULT_LABEL if version is None and label is None else label


def _ref_of(key: _Key) -> PromptRef:
    return PromptRef(key[1], key[2], key[3])


def _ref(key: _Key) -> str:
    return f"prompt {_ref_of(key)}"


class _TenantView:
    """`CachedRegistry.for_tenant`: one tenant's side of the shared cache."""

    __slots__ = ("_cache", "_registry", "_tenant")

    def __init__(self, cache: CachedRegistry, tenant: str, registry: PromptRegistry) -> None:
        self._cache = cache
        self._tenant = tenant
        self._registry = registry

    def __repr__(self) -> str:
        return f"<tenant view of {self._cache!r}>"

    async def get_prompt(
        self, name: str, *, version: int | None = None, label: str | None = None
    ) -> Prompt:
        key = (self._tenant, name, version, _label(version, label))
        return await self._cache._get(key, self._registry)


def _spawn_detached(job: _Job, tasks: set[asyncio.Task[None]]) -> asyncio.Task[None] | None:
    """Run `job` outside any request's task: a trio system task, else an asyncio task.

    The asyncio task is kept in `tasks` until it ends (the loop holds only a weak reference) and
    returned. Jobs catch their own errors, so neither kind can crash the event loop.
    """
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:  # trio is imported but not running here
            pass
        else:
            trio.lowlevel.spawn_system_task(job, name=_TASK_NAME)
            return None
    task = asyncio.get_running_loop().create_task(job(), name=_TASK_NAME)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task
