"""Keeping many workers and replicas coherent (DESIGN §10): webhooks, Redis, polling.

One entry point, `Coherence`, wires every source to a `CachedRegistry`:

    cache = middleware.registry                  # the CachedRegistry PromptMiddleware made
    coherence = Coherence(
        cache,
        webhook_secrets=["lf-whsec_..."],        # webhooks.langfuse.secrets
        tolerance=300,                           # webhooks.langfuse.tolerance
        redis_url="redis://127.0.0.1:6379/0",    # cache.redis_url (needs the `redis` extra)
        poll_interval=30,                        # cache.poll_interval
    )
    app = coherence.wrap(middleware, webhook_path="/webhooks/langfuse")   # webhooks.langfuse.path

`wrap()` answers the webhook route and runs `await coherence.run()` in the ASGI lifespan's task
group. A gateway that already owns a lifespan task group can instead start `coherence.run` in it
and mount `coherence.webhook_app` (an ASGI app, None without secrets) on its route.

- Webhook: `POST` with `x-langfuse-signature`, checked against every secret in constant time;
  401 for a missing, wrong or stale signature, 400 for a malformed authentic payload, 413 for a
  body over `max_body_size`, 200 for every authentic delivery (deduplicated by its `id`, across
  workers when Redis is configured). A `prompt-version` event drops every cached prompt of that
  Langfuse project: the server's own (its project id is given or learned from
  `GET /api/public/projects`) and any per-request-credential tenant resolved to it.
- Redis: see `redis`; invalidations reach every worker and survive reconnects (epochs).
- Polling: see `polling`; one elected poller when Redis is configured.
- `cache.invalidate(name)` (origin "api") is passed on to every worker too;
  `publish_invalidation(redis_url, name)` does the same from outside (the CLI).
"""

from .hub import SERVER_SCOPE, Coherence, CoherenceStats, CoherentApp
from .polling import Poller, PollStats
from .webhook import (
    SIGNATURE_HEADER,
    PromptChange,
    WebhookApp,
    WebhookStats,
    sign,
    verify_signature,
)

__all__ = [
    "SERVER_SCOPE",
    "SIGNATURE_HEADER",
    "Coherence",
    "CoherenceStats",
    "CoherentApp",
    "PollStats",
    "Poller",
    "PromptChange",
    "WebhookApp",
    "WebhookStats",
    "sign",
    "verify_signature",
]
