"""Redis fan-out of invalidations between workers and replicas, with `coredis` (asyncio and trio).

- Each invalidation bumps a per-scope epoch in one Redis hash and publishes `"<epoch> <json>"`
  on one channel, atomically (a Lua script). Scopes name what changed across processes:
  `project:<langfuse project id>`, `server` (the server's own registry) or `*` (everything).
- Every worker subscribes. Pub/sub drops what is sent while a subscriber is away, so on each
  (re)subscribe the worker re-reads the epochs and drops the scopes whose epoch moved.
- Redis down, at start or later: invalidations stay local, a warning is logged once per
  outage, publishes wait in a small queue, and the subscriber reconnects with capped backoff.
  No client request ever waits on Redis for longer than `timeout`.
- A webhook delivery is claimed by its id (`SET NX`), bumped and published in the same script,
  so across processes it is acted on once, and never claimed without being published.
- Also here: the poller's election lock and high-water mark, and an optional shared L2 prompt
  cache (`SharedPromptCache`).

`publish_invalidation(url, name)` does one invalidation from outside the workers (the CLI).
Needs the `redis` extra (`coredis>=6`).
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import coredis

if sys.version_info < (3, 11):  # pragma: no cover - anyio installs the backport there
    from exceptiongroup import BaseExceptionGroup

from ...core.prompts import Prompt
from ..base import PromptRegistry

__all__ = [
    "ALL_SCOPES",
    "DEFAULT_PREFIX",
    "RedisFanout",
    "RedisStats",
    "SharedPromptCache",
    "publish_invalidation",
]

logger = logging.getLogger("prompt_middleware.coherence.redis")

DEFAULT_PREFIX = "prompt_middleware"
ALL_SCOPES = "*"
_MAX_PENDING = 256
# One round trip, so no subscriber can read the new epoch without the message being sent.
_BUMP_AND_PUBLISH = """
local epoch = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('PUBLISH', ARGV[2], epoch .. ' ' .. ARGV[3])
return epoch
"""
# A webhook delivery: claimed, bumped and published in one step, so a worker that dies halfway
# cannot leave a claimed delivery that nobody published (Langfuse's retry would be a duplicate).
# Answers 0 when claimed before (an epoch starts at 1).
_CLAIM_BUMP_AND_PUBLISH = (
    """
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[4]) then return 0 end"""
    + _BUMP_AND_PUBLISH
)
_TAKE_LEAD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""

OnMessage = Callable[[str, "str | None"], None]


@dataclass(frozen=True, slots=True)
class RedisStats:
    """What the fan-out did since it was created.

    Attributes:
        published: invalidations published to the other workers.
        received: invalidations received from other workers (own messages not counted).
        resyncs: scopes dropped on a (re)subscribe because their epoch had moved.
        subscribes: successful (re)subscriptions; more than one means reconnects.
        outages: times Redis became unreachable.
        errors: Redis commands that failed (each outage counts its failures here).
        up: whether the subscriber is connected now.
    """

    published: int = 0
    received: int = 0
    resyncs: int = 0
    subscribes: int = 0
    outages: int = 0
    errors: int = 0
    up: bool = False


class RedisFanout:
    """One worker's link to Redis: subscriber, publisher and small shared state.

    Args:
        url: `redis://[:password@]host:port/db` (or `rediss://`, `unix://`).
        on_message: called as `on_message(scope, name)` for every invalidation from another
            worker, and with `name=None` for each scope dropped on resubscribe.
        prefix: prefix of every key and of the channel, so several gateways can share a Redis.
        timeout: seconds any one Redis call may take (connect included).
        backoff_base, backoff_max: reconnect delays, doubling from base up to max, jittered.
        keepalive: seconds without a message after which the subscriber PINGs Redis (answered
            within `timeout`, or it reconnects): a connection a firewall or NAT silently dropped
            would otherwise look subscribed while every invalidation is lost.
    """

    def __init__(
        self,
        url: str,
        on_message: OnMessage,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 1.0,
        backoff_base: float = 0.1,
        backoff_max: float = 5.0,
        keepalive: float = 15.0,
    ) -> None:
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError("timeout must be a positive number of seconds")
        self._url = url
        self._where = _describe_url(url)
        # Made in run(): coredis binds its locks to the event loop that first creates them.
        self._client: coredis.Redis[str] = _DISCONNECTED
        self._on_message = on_message
        self._prefix = prefix
        self._channel = f"{prefix}:invalidations"
        self._epochs_key = f"{prefix}:epochs"
        self._timeout = timeout
        self._backoff = (backoff_base, backoff_max)
        self._keepalive = keepalive
        self.worker_id = uuid.uuid4().hex
        self._epochs: dict[str, int] = {}
        self._pending: dict[tuple[str, str | None], str] = {}  # -> origin
        self._wake: anyio.Event | None = None  # made in run(), on the loop that waits on it
        self._running = False
        self._up = False
        self._warned = False  # about the outage in progress
        self._commands_failing = False  # warned about failing commands, none has worked since
        self._counts = dict.fromkeys(("published", "received", "resyncs", "subscribes"), 0)
        self._counts |= {"outages": 0, "errors": 0}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._where!r})"

    @property
    def up(self) -> bool:
        """Whether the subscriber is connected (and Redis answered its last command)."""
        return self._up

    @property
    def stats(self) -> RedisStats:
        return RedisStats(**self._counts, up=self._up)

    def epoch(self, scope: str) -> int:
        """The last epoch of `scope` this worker knows (0 if none)."""
        return self._epochs.get(scope, 0)

    def key(self, *parts: Any) -> str:
        """A key under the prefix; parts are JSON-encoded so `3` and `"3"` never collide."""
        return f"{self._prefix}:" + json.dumps(parts, separators=(",", ":"), ensure_ascii=False)

    # -- running -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep subscribed until cancelled; reconnect with capped backoff. Never raises."""
        self._client = _connect(self._url, self._timeout)
        self._wake = anyio.Event()
        async with self._client, anyio.create_task_group() as task_group:
            self._running = True
            task_group.start_soon(self._flush_loop)
            try:
                await self._subscribe_loop()
            finally:
                self._running = self._up = False
                task_group.cancel_scope.cancel()

    async def _subscribe_loop(self) -> None:
        delay = self._backoff[0]
        while True:
            try:
                async with self._client.pubsub(
                    channels=[self._channel],
                    retry_policy=None,
                    ignore_subscribe_messages=True,
                    max_idle_seconds=self._keepalive,
                ) as pubsub:
                    await self._resync()
                    self._counts["subscribes"] += 1
                    self._mark_up()
                    delay = self._backoff[0]
                    async for message in pubsub:
                        if message["type"] == "message":
                            self._handle(str(message["data"]))
                raise coredis.exceptions.ConnectionError("subscription ended")
            except Exception as exc:
                await anyio.lowlevel.checkpoint()  # being cancelled: that is no outage
                self._mark_down(exc)
            except BaseException as exc:
                # Cancelled while subscribed: coredis 6.9's pub/sub cleanup then writes
                # UNSUBSCRIBE to a connection being closed by the same cancellation and adds
                # ClosedResourceError beside the cancellation. Only the cancellation goes on.
                if isinstance(exc, BaseExceptionGroup):
                    _, rest = exc.split(Exception)
                    if rest is not None and rest is not exc:
                        raise rest from None
                raise
            await anyio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._backoff[1])

    async def _resync(self) -> None:
        with anyio.fail_after(self._timeout):
            remote = await self._client.hgetall(self._epochs_key)
        current = {scope: int(epoch) for scope, epoch in remote.items()}
        moved = [s for s in {*current, *self._epochs} if current.get(s) != self._epochs.get(s)]
        self._epochs = current
        for scope in moved:
            self._counts["resyncs"] += 1
            self._on_message(scope, None)
        if moved:
            logger.info("Dropped cached prompts of %d scope(s) changed meanwhile", len(moved))

    def _handle(self, data: str) -> None:
        try:
            epoch_text, _, payload = data.partition(" ")
            message = json.loads(payload)
            epoch, scope = int(epoch_text), message["scope"]
            name, sender = message.get("name"), message.get("sender")
            if not isinstance(scope, str) or not (name is None or isinstance(name, str)):
                raise TypeError("bad field types")
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.warning("Ignored an unreadable invalidation message on %s", self._channel)
            return
        self._epochs[scope] = max(epoch, self._epochs.get(scope, 0))
        if sender == self.worker_id:
            return
        self._counts["received"] += 1
        self._on_message(scope, name)

    # -- publishing --------------------------------------------------------------------------

    async def publish(self, scope: str, name: str | None, origin: str) -> bool:
        """Bump `scope`'s epoch and tell every worker; False if it was queued instead."""
        return await self._publish(scope, name, origin, None) is True

    async def publish_once(
        self, claim: str, ttl: float, scope: str, name: str | None, origin: str
    ) -> bool | None:
        """`publish`, unless the key `claim` was set before (set it for `ttl` seconds).

        True: published; False: claimed before, nothing done; None: Redis unavailable, the
        invalidation is queued (the caller acts on it locally; twice is harmless).
        """
        return await self._publish(scope, name, origin, (claim, ttl))

    async def _publish(
        self, scope: str, name: str | None, origin: str, claim: tuple[str, float] | None
    ) -> bool | None:
        """`publish_once` with a claim, `publish` without: True, False or None as there."""
        if not (self._running and self._up):
            self.enqueue(scope, name, origin)
            return None
        payload = json.dumps(
            {"scope": scope, "name": name, "origin": origin, "sender": self.worker_id},
            separators=(",", ":"),
            ensure_ascii=False,
        )
        script, keys, args = _BUMP_AND_PUBLISH, [self._epochs_key], [scope, self._channel, payload]
        if claim is not None:
            key, ttl = claim
            script = _CLAIM_BUMP_AND_PUBLISH
            keys.append(key)
            args.append(str(_ms(ttl)))
        epoch = await self._command(lambda c: c.eval(script, keys=keys, args=args))
        if epoch is _DOWN:
            self.enqueue(scope, name, origin)
            return None
        bumped = int(str(epoch))
        if bumped == 0:
            return False
        self._epochs[scope] = max(bumped, self._epochs.get(scope, 0))
        self._counts["published"] += 1
        return True

    def enqueue(self, scope: str, name: str | None, origin: str = "api") -> None:
        """Publish later (soon, or once Redis is back), without waiting."""
        if len(self._pending) >= _MAX_PENDING:  # too many to tell apart: everything changed
            self._pending = {(ALL_SCOPES, None): origin}
        else:
            self._pending[(scope, name)] = origin
        if self._wake is not None:
            self._wake.set()

    async def _flush_loop(self) -> None:
        delay = self._backoff[0]
        while True:
            assert self._wake is not None
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._pending and self._up:
                scope, name = next(iter(self._pending))
                origin = self._pending.pop((scope, name))
                if await self.publish(scope, name, origin):
                    delay = self._backoff[0]
                    continue
                # Requeued. Redis may refuse writes while the subscription stays up (a replica
                # after a failover: READONLY; out of memory): wait before trying again, or this
                # loop would spin on a refusal that comes back at once.
                await anyio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self._backoff[1])

    # -- small shared state ------------------------------------------------------------------

    async def take_lead(self, key: str, ttl: float) -> bool | None:
        """Hold (or renew) the lock `key` for `ttl` seconds; None if Redis is down."""
        result = await self._command(
            lambda c: c.eval(_TAKE_LEAD, keys=[key], args=[self.worker_id, str(_ms(ttl))])
        )
        return None if result is _DOWN else result == 1

    async def get(self, key: str) -> str | None:
        """The value at `key`; None when absent or Redis is down."""
        result = await self._command(lambda c: c.get(key))
        return None if result is _DOWN else result

    async def set(self, key: str, value: str, ttl: float | None = None) -> None:
        """Store `value` at `key` (best effort), expiring after `ttl` seconds if given."""
        await self._command(lambda c: c.set(key, value, px=None if ttl is None else _ms(ttl)))

    async def _command(self, call: Callable[[coredis.Redis[str]], Any]) -> Any:
        """`call(client)`, retried once; `_DOWN` if the subscriber is away or both fail.

        The retry is for pooled connections that died with a Redis restart (coredis raises
        anyio's ClosedResourceError for those rather than reconnecting). A failure here does not
        mark Redis down: the subscriber decides that, and keeps trying.
        """
        if not (self._running and self._up):
            return _DOWN
        for attempt in (1, 2):
            try:
                with anyio.fail_after(self._timeout):
                    result = await call(self._client)
            except Exception as exc:
                self._counts["errors"] += 1
                # A timeout is a slow or paused Redis, not a dead pooled connection: retrying
                # would only double the wait of a webhook delivery that is waiting on it.
                if attempt == 2 or isinstance(exc, TimeoutError):
                    self._command_failed(exc)
                    return _DOWN
            else:
                if self._commands_failing:
                    self._commands_failing = False
                    logger.warning("Redis at %s takes commands again", self._where)
                return result
        return _DOWN  # pragma: no cover - the loop returns

    def _command_failed(self, exc: BaseException) -> None:
        """One warning per streak of failed commands (the subscriber warns about outages)."""
        if self._commands_failing:
            logger.debug("A Redis command failed (%s); kept local", _reason(exc))
            return
        self._commands_failing = True
        logger.warning(
            "Redis commands fail (%s); invalidations stay local and are retried", _reason(exc)
        )

    # -- outage bookkeeping ------------------------------------------------------------------

    def _mark_up(self) -> None:
        if self._warned:
            logger.warning("Redis at %s answers again; invalidations are shared", self._where)
        self._up, self._warned = True, False
        if self._pending and self._wake is not None:
            self._wake.set()

    def _mark_down(self, exc: BaseException) -> None:
        self._counts["errors"] += 1
        self._up = False
        if not self._warned:
            self._warned = True
            self._counts["outages"] += 1
            logger.warning(
                "Redis at %s is unreachable (%s); serving from the local cache and reconnecting",
                self._where,
                _reason(exc),
            )
        else:
            logger.debug("Redis at %s still unreachable (%s)", self._where, _reason(exc))


class SharedPromptCache:
    """A registry wrapper sharing fetched prompts between workers through Redis (an L2 cache).

    Keys are typed, `[scope, epochs…, name, "version", N]` or `[…, "label", L]`, so version 3
    and label "3" never collide, and hold the epochs of the scope and of `*`: an invalidation
    moves every worker to new keys at once. Not-found answers are not shared. When Redis is
    down or slow the wrapped registry answers alone. The `CachedRegistry` in front still makes
    one call per key per worker (single-flight). `scope()` names the scope to share under;
    None: do not share (yet).
    """

    def __init__(
        self,
        registry: PromptRegistry,
        fanout: RedisFanout,
        scope: Callable[[], str | None],
        ttl: float,
    ) -> None:
        self.registry = registry
        self._fanout = fanout
        self._scope = scope
        self._ttl = ttl
        self.hits = self.misses = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.registry!r}, {self._fanout!r})"

    async def get_prompt(
        self, name: str, *, version: int | None = None, label: str | None = None
    ) -> Prompt:
        scope = self._scope()
        if scope is None:  # nothing to share under yet
            return await self.registry.get_prompt(name, version=version, label=label)
        key = self._key(scope, name, version, label)
        cached = await self._fanout.get(key)
        if cached is not None:
            try:
                prompt = Prompt.from_langfuse(json.loads(cached))
            except Exception:
                logger.warning("Ignored an unreadable shared cache entry for %r", name)
            else:
                self.hits += 1
                return prompt
        self.misses += 1
        prompt = await self.registry.get_prompt(name, version=version, label=label)
        if isinstance(prompt, Prompt) and self._ttl > 0:
            await self._fanout.set(key, json.dumps(_prompt_data(prompt)), self._ttl)
        return prompt

    async def aclose(self) -> None:
        close = getattr(self.registry, "aclose", None)
        if close is not None:
            await close()

    def _key(self, scope: str, name: str, version: int | None, label: str | None) -> str:
        epochs = (self._fanout.epoch(scope), self._fanout.epoch(ALL_SCOPES))
        selector = ("version", version) if version is not None else ("label", label or "")
        return self._fanout.key("prompt", scope, *epochs, name, *selector)


async def publish_invalidation(
    url: str,
    name: str | None = None,
    *,
    scope: str = ALL_SCOPES,
    prefix: str = DEFAULT_PREFIX,
    timeout: float = 5.0,  # noqa: ASYNC109 (also the client's connect and read timeouts)
) -> int:
    """Invalidate prompt `name` (or every prompt) in every worker sharing the Redis at `url`.

    `scope` limits it to one scope (`project:<id>` or `server`); the default reaches all.
    Returns the scope's new epoch. Raises `coredis` errors (or `TimeoutError`) when Redis
    cannot be reached: a caller on the command line wants to know.
    """
    payload = json.dumps(
        {"scope": scope, "name": name, "origin": "api", "sender": "cli"},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    client = _connect(url, timeout)
    with anyio.fail_after(timeout):
        async with client:
            epoch = await client.eval(
                _BUMP_AND_PUBLISH,
                keys=[f"{prefix}:epochs"],
                args=[scope, f"{prefix}:invalidations", payload],
            )
    return int(str(epoch))


_DOWN = object()


def _connect(url: str, timeout: float) -> coredis.Redis[str]:
    return coredis.Redis.from_url(
        url, decode_responses=True, connect_timeout=timeout, stream_timeout=timeout
    )


_DISCONNECTED: Any = None


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _prompt_data(prompt: Prompt) -> dict[str, Any]:
    body = prompt.prompt if isinstance(prompt.prompt, str) else [dict(m) for m in prompt.prompt]
    return {
        "name": prompt.name,
        "version": prompt.version,
        "type": prompt.type,
        "prompt": body,
        "config": dict(prompt.config),
        "labels": list(prompt.labels),
        "tags": list(prompt.tags),
    }


def _reason(exc: BaseException) -> str:
    """The exception class, and the first one inside a group: never a message (may hold URLs)."""
    inner = getattr(exc, "exceptions", None)
    if inner:
        return _reason(inner[0])
    return type(exc).__name__


def _describe_url(url: str) -> str:
    """`host:port/db` of a Redis URL, without any password."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "unix":
        return f"unix:{parts.path}"
    host = parts.hostname or "localhost"
    return f"{host}:{parts.port or 6379}{parts.path or ''}"
