"""`Coherence`: one object that keeps a `CachedRegistry` in step with Langfuse and its peers."""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from cachetools import LRUCache
from starlette.types import ASGIApp, Receive, Scope, Send

from ..._asgi import Background, route_path
from ...core.errors import PromptMiddlewareError
from ..cache import CachedRegistry, CacheStats, InvalidationOrigin
from ..langfuse import LangfuseRegistry
from ._langfuse_api import project_id as fetch_project_id
from .polling import DEFAULT_OVERLAP, Poller, PollStats
from .webhook import (
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_TOLERANCE,
    PromptChange,
    WebhookApp,
    WebhookStats,
)

if TYPE_CHECKING:
    from .redis import RedisFanout, RedisStats, SharedPromptCache

__all__ = ["SERVER_SCOPE", "Coherence", "CoherenceStats", "CoherentApp"]

logger = logging.getLogger("prompt_middleware.coherence")

SERVER_SCOPE = "server"
ALL_SCOPES = "*"
_PROJECT = "project:"
_DELIVERY_TTL = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class CoherenceStats:
    """Everything the invalidation sources did, for logs and metrics.

    `cache` holds the cache's own counters, `invalidations` by origin among them.
    `redis` and `polling` are None when that source is not configured, as is `webhook`.
    `shared_hits` / `shared_misses` count the Redis L2 cache's lookups (0 without it).
    """

    cache: CacheStats
    webhook: WebhookStats | None
    redis: RedisStats | None
    polling: PollStats | None
    shared_hits: int = 0
    shared_misses: int = 0


class Coherence:
    """Keeps `cache` coherent with Langfuse and with the other workers and replicas.

    Args:
        cache: the `CachedRegistry` to keep fresh (e.g. `PromptMiddleware(...).registry`).
        webhook_secrets: Langfuse webhook signing secrets (`lf-whsec_…`); with any, the
            `webhook_app` accepts signed `prompt-version` deliveries.
        tolerance: seconds a webhook signature's timestamp may be off.
        redis_url: share invalidations with every worker through this Redis (`redis` extra).
        shared_cache: also share fetched prompts through Redis (an L2 cache, `cache_ttl` long),
            once the server's Langfuse project id is known. It wraps `cache.registry`, so make
            the `Coherence` after the `PromptMiddleware` whose cache it is.
        poll_interval: poll Langfuse for changed prompts every so many seconds (one elected
            poller when Redis is configured, else one per worker).
        project_id: the server's Langfuse project id; learned from Langfuse when not given.
        langfuse: the `LangfuseRegistry` used to learn the project and to poll; defaults to the
            cache's registry when it is one.
        prefix: prefix of the Redis keys and channel.
        redis_timeout: seconds any one Redis call may take.
        redis_keepalive: seconds without a message before the subscriber PINGs Redis, so a
            connection dropped silently (a firewall, NAT) is noticed and epochs are re-read.
    """

    def __init__(
        self,
        cache: CachedRegistry,
        *,
        webhook_secrets: Sequence[str] = (),
        tolerance: float = DEFAULT_TOLERANCE,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        redis_url: str | None = None,
        shared_cache: bool = False,
        cache_ttl: float = 60.0,
        poll_interval: float | None = None,
        poll_overlap: float = DEFAULT_OVERLAP,
        project_id: str | None = None,
        langfuse: LangfuseRegistry | None = None,
        prefix: str | None = None,
        redis_timeout: float = 1.0,
        redis_keepalive: float = 15.0,
    ) -> None:
        self.cache = cache
        if langfuse is None and isinstance(cache.registry, LangfuseRegistry):
            langfuse = cache.registry
        self._langfuse = langfuse
        self.project_id = project_id
        self._tenant_projects: LRUCache[str, str] = LRUCache(1024)
        self._learning: set[str] = set()
        self._task_group: anyio.abc.TaskGroup | None = None
        self._applying = False

        self.fanout: RedisFanout | None = None
        self._shared: SharedPromptCache | None = None
        if redis_url:
            from .redis import DEFAULT_PREFIX, RedisFanout, SharedPromptCache

            self.fanout = RedisFanout(
                redis_url,
                self._apply_remote,
                prefix=prefix or DEFAULT_PREFIX,
                timeout=redis_timeout,
                keepalive=redis_keepalive,
            )
            if shared_cache:
                self._shared = SharedPromptCache(
                    cache.registry, self.fanout, self._shared_scope, cache_ttl
                )
                cache.registry = self._shared
        elif shared_cache:
            raise ValueError("shared_cache needs redis_url")

        self.poller: Poller | None = None
        if poll_interval is not None:
            if langfuse is None:
                raise ValueError("poll_interval needs a LangfuseRegistry to poll")
            fanout = self.fanout
            self.poller = Poller(
                langfuse,
                poll_interval,
                self._polled,
                overlap=poll_overlap,
                leader=None if fanout is None else self._poll_leader,
                load_mark=None if fanout is None else self._load_mark,
                save_mark=None if fanout is None else self._save_mark,
            )

        self.webhook_app: WebhookApp | None = None
        if webhook_secrets:
            self.webhook_app = WebhookApp(
                webhook_secrets,
                self._webhook_change,
                tolerance=tolerance,
                max_body_size=max_body_size,
            )
        cache.add_invalidation_listener(self._cache_invalidated)

    def __repr__(self) -> str:
        parts = [
            f"webhook={self.webhook_app is not None}",
            f"redis={self.fanout!r}",
            f"poll_interval={None if self.poller is None else self.poller.interval}",
        ]
        return f"{type(self).__name__}({', '.join(parts)})"

    @property
    def stats(self) -> CoherenceStats:
        return CoherenceStats(
            cache=self.cache.stats,
            webhook=None if self.webhook_app is None else self.webhook_app.stats,
            redis=None if self.fanout is None else self.fanout.stats,
            polling=None if self.poller is None else self.poller.stats,
            shared_hits=0 if self._shared is None else self._shared.hits,
            shared_misses=0 if self._shared is None else self._shared.misses,
        )

    @property
    def running(self) -> bool:
        """Whether `run()` is going (its subscriber, poller and discovery)."""
        return self._task_group is not None

    def server_scope(self) -> str:
        """The scope name other workers know the server's own prompts by."""
        return SERVER_SCOPE if self.project_id is None else _PROJECT + self.project_id

    def _shared_scope(self) -> str | None:
        # Until the project is known, a webhook bumps `project:<id>` while this worker would
        # key shared entries under `server`, and could read an old copy: no sharing until then.
        return None if self.project_id is None else self.server_scope()

    def wrap(self, app: ASGIApp, *, webhook_path: str = "/webhooks/langfuse") -> CoherentApp:
        """`app` with the webhook route in front and `run()` going for its lifespan."""
        return CoherentApp(app, self, webhook_path=webhook_path)

    # -- running -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the Redis subscriber, the poller and project discovery until cancelled.

        Start it in the app's lifespan task group (`CoherentApp` does). Never raises.
        """
        async with anyio.create_task_group() as task_group:
            self._task_group = task_group
            try:
                if self.project_id is None and self._langfuse is not None:
                    task_group.start_soon(self._learn_server_project)
                if self.fanout is not None:
                    task_group.start_soon(self.fanout.run)
                if self.poller is not None:
                    task_group.start_soon(self.poller.run)
                await anyio.sleep(math.inf)
            finally:
                self._task_group = None

    async def invalidate(
        self,
        name: str | None = None,
        *,
        project_id: str | None = None,
        origin: InvalidationOrigin = "api",
    ) -> None:
        """Invalidate `name` (or every prompt) here and, with Redis, in every worker.

        `project_id` limits it to one Langfuse project's tenants; default: every tenant.
        Returns once the other workers have been told (or the message is queued because
        Redis is down).
        """
        scope = ALL_SCOPES if project_id is None else _PROJECT + project_id
        # Published first: the new epoch must be known here before a refetch can start, or
        # it could read the replaced prompt back from the shared cache.
        if self.fanout is not None:
            await self.fanout.publish(scope, name, origin)
        self._apply(scope, name, origin)

    # -- sources -----------------------------------------------------------------------------

    async def _webhook_change(self, change: PromptChange) -> bool:
        """Drop the delivery's project everywhere; False if another worker already took it."""
        scope = _PROJECT + change.project_id
        if self.fanout is not None:
            claim = self.fanout.key("delivery", change.delivery_id)
            published = await self.fanout.publish_once(claim, _DELIVERY_TTL, scope, None, "webhook")
            if published is False:
                return False
            # None: Redis is unavailable and the invalidation queued; act on it here anyway.
        logger.info(
            "Langfuse reports prompt %r %s (project %s): dropping that project's cached prompts",
            change.name,
            change.action or "changed",
            change.project_id,
        )
        self._apply(scope, None, "webhook")
        return True

    async def _polled(self, names: list[str]) -> None:
        scope = self.server_scope()
        for name in names:
            if self.fanout is not None:  # first, as in `invalidate`
                await self.fanout.publish(scope, name, "poll")
            self._apply(scope, name, "poll")

    def _apply_remote(self, scope: str, name: str | None) -> None:
        self._apply(scope, name, "pubsub")

    def _cache_invalidated(
        self, name: str | None, tenant: str | Collection[str] | None, origin: InvalidationOrigin
    ) -> None:
        """Pass direct `cache.invalidate()` calls on to the other workers."""
        if self._applying or origin != "api" or self.fanout is None:
            return
        if tenant is None or not isinstance(tenant, str):
            scope = ALL_SCOPES
        elif tenant == "":
            scope = self.server_scope()
        else:
            known = self._tenant_projects.get(tenant)
            scope = ALL_SCOPES if known is None else _PROJECT + known
        self.fanout.enqueue(scope, name, origin)

    def _apply(self, scope: str, name: str | None, origin: InvalidationOrigin) -> None:
        tenants = self._tenants_for(scope)
        if tenants is not None and not tenants:
            return
        self._applying = True
        try:
            self.cache.invalidate(name, tenant=tenants, origin=origin)
        finally:
            self._applying = False

    def _tenants_for(self, scope: str) -> list[str] | None:
        """The local tenants a scope concerns; None for all of them."""
        if scope == ALL_SCOPES:
            return None
        if scope == SERVER_SCOPE:
            return [""]
        if not scope.startswith(_PROJECT):
            logger.warning("Ignored an invalidation for an unknown scope %r", scope[:100])
            return []
        project = scope[len(_PROJECT) :]
        # A project we do not know yet may be ours: dropping too much only costs a refetch.
        tenants = [""] if self.project_id in (None, project) else []
        for tenant, registry in self.cache.tenants().items():
            known = self._tenant_projects.get(tenant)
            if known is None:
                tenants.append(tenant)
                self._learn_tenant(tenant, registry)
            elif known == project:
                tenants.append(tenant)
        return tenants

    # -- learning projects -------------------------------------------------------------------

    async def _learn_server_project(self) -> None:
        assert self._langfuse is not None
        delay = 0.5
        while self.project_id is None:
            try:
                self.project_id = await fetch_project_id(self._langfuse)
            except PromptMiddlewareError as exc:
                logger.warning(
                    "Could not learn the Langfuse project id (%s); webhooks for any project "
                    "drop the server's cached prompts until it is known",
                    exc.message,
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, 60.0)
            else:
                logger.info("Serving prompts of Langfuse project %s", self.project_id)

    def _learn_tenant(self, tenant: str, registry: Any) -> None:
        if (
            self._task_group is None
            or tenant in self._learning
            or not isinstance(registry, LangfuseRegistry)
        ):
            return
        self._learning.add(tenant)

        async def learn() -> None:
            try:
                self._tenant_projects[tenant] = await fetch_project_id(registry)
            except PromptMiddlewareError:
                logger.debug("Could not learn a tenant's Langfuse project", exc_info=True)
            finally:
                self._learning.discard(tenant)

        self._task_group.start_soon(learn)

    # -- Redis helpers -----------------------------------------------------------------------

    async def _poll_leader(self) -> bool:
        assert self.fanout is not None
        assert self.poller is not None
        # Held for a few turns, so a slow turn does not hand the poll to another worker.
        hold = max(3 * self.poller.interval, 5.0)
        lead = await self.fanout.take_lead(self.fanout.key("poller"), hold)
        return lead is not False  # Redis down: every worker polls for itself

    async def _load_mark(self) -> str | None:
        assert self.fanout is not None
        return await self.fanout.get(self.fanout.key("poll-mark"))

    async def _save_mark(self, mark: str) -> None:
        assert self.fanout is not None
        await self.fanout.set(self.fanout.key("poll-mark"), mark, 24 * 3600.0)


class CoherentApp:
    """`app` behind a webhook route, with `coherence.run()` going during the ASGI lifespan.

    Requests to `webhook_path` (below any `root_path`) go to the webhook app when webhook
    secrets are configured; everything else goes to `app` untouched.
    """

    def __init__(
        self, app: ASGIApp, coherence: Coherence, *, webhook_path: str = "/webhooks/langfuse"
    ) -> None:
        self.app = app
        self.coherence = coherence
        self.webhook_path = webhook_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        webhook = self.coherence.webhook_app
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        elif scope["type"] == "http" and webhook is not None and self._is_webhook(scope):
            await webhook(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _is_webhook(self, scope: Scope) -> bool:
        return route_path(scope) == self.webhook_path

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`coherence.run()` from startup until the server asks to shut down.

        It is stopped, and awaited, before `app` hears of the shutdown: the poller and the
        subscriber must not outlive the registries `app` closes then, nor still be running once
        the server hears that shutdown is complete (uvicorn cancels the lifespan then).
        """
        error: Exception | None = None
        background = Background([self.coherence.run])
        async with anyio.create_task_group() as task_group:
            background.start(task_group)
            try:
                await self.app(scope, background.stopping_at_shutdown(receive), send)
            except Exception as exc:  # re-raised bare, not inside an ExceptionGroup
                error = exc
            finally:
                task_group.cancel_scope.cancel()
        if error is not None:
            raise error
