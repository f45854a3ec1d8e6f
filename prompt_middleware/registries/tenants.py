"""Per-request Langfuse credentials: one plain `PromptRegistry` per tenant, cache-aware.

`LangfuseTenants.registry_for(credentials)` is the one entry point the middleware uses: it
checks the host against an allow-list, derives the tenant key and returns a registry that asks
Langfuse with those keys, through the shared cache under that tenant's key when there is one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Collection

from cachetools import LRUCache

from ..core.errors import InvalidPromptRequest
from ..core.prompts import require_text
from ..core.references import Credentials
from ._urls import normalise_base_url, origin_and_path, split_url
from .base import PromptRegistry
from .cache import CachedRegistry
from .langfuse import LangfuseRegistry

__all__ = ["LangfuseTenants"]


class LangfuseTenants:
    """Registries for per-request Langfuse credentials, in a bounded LRU pool.

    The tenant key is an HMAC over (base URL, public key, secret key) with a per-process random
    key, so two key pairs (or a wrong secret next to the right one) never share a key or a cache
    entry, and the key reveals nothing. Hosts must be on `allowed_hosts` (default: only the base
    registry's host); requests go to the configured URL, never to a string taken from the
    request. The pooled registries share the base registry's HTTP client; with `cache`, each
    tenant's prompts are cached in it under the tenant's key.
    """

    def __init__(
        self,
        base: LangfuseRegistry,
        *,
        cache: CachedRegistry | None = None,
        allowed_hosts: Collection[str] | None = None,
        max_tenants: int = 256,
    ) -> None:
        if isinstance(max_tenants, bool) or not isinstance(max_tenants, int) or max_tenants < 1:
            raise ValueError("max_tenants must be a positive integer")
        self._base = base
        self._cache = cache
        self._allowed: dict[str, str] = {origin_and_path(base.base_url)[0]: base.base_url}
        for entry in allowed_hosts or ():
            url = normalise_base_url(entry)
            self._allowed.setdefault(origin_and_path(url)[0], url)
        self._pool: LRUCache[str, tuple[LangfuseRegistry, PromptRegistry]] = LRUCache(
            maxsize=max_tenants
        )
        self._hmac_key = secrets.token_bytes(32)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(hosts={sorted(self._allowed.values())!r}, "
            f"tenants={len(self._pool)}/{self._pool.maxsize})"
        )

    def __len__(self) -> int:
        return len(self._pool)

    def registry_for(self, credentials: Credentials) -> PromptRegistry:
        """The registry serving these credentials (cached when the pool has a cache); no I/O."""
        return self._entry(credentials.public_key, credentials.secret_key, credentials.host)[2]

    def resolve(
        self, public_key: str, secret_key: str, host: str | None = None
    ) -> tuple[str, LangfuseRegistry]:
        """The tenant key and the (uncached) Langfuse registry for these credentials; no I/O.

        Raises `InvalidPromptRequest` for empty keys or a host that is not allowed.
        """
        tenant, registry, _ = self._entry(public_key, secret_key, host)
        return tenant, registry

    async def aclose(self) -> None:
        """Forget every tenant. The base registry belongs to its owner and stays open."""
        self._pool.clear()

    def _entry(
        self, public_key: str, secret_key: str, host: str | None
    ) -> tuple[str, LangfuseRegistry, PromptRegistry]:
        require_text(public_key, "langfuse_public_key")
        require_text(secret_key, "langfuse_secret")
        base_url = self._allowed_base_url(host)
        tenant = self._tenant_key(base_url, public_key, secret_key)
        pooled = self._pool.get(tenant)
        if pooled is None:
            registry = self._base.with_credentials(public_key, secret_key, base_url)
            served = registry if self._cache is None else self._cache.for_tenant(tenant, registry)
            pooled = self._pool[tenant] = (registry, served)
        return tenant, *pooled

    def _allowed_base_url(self, host: str | None) -> str:
        if host is None:
            return self._base.base_url
        split = split_url(host) if isinstance(host, str) else None
        if split is not None:
            origin, path = split
            allowed = self._allowed.get(origin)
            if allowed is not None and path in ("", origin_and_path(allowed)[1]):
                return allowed
        raise InvalidPromptRequest(
            "langfuse_host is not a Langfuse host this server may use.", param="langfuse_host"
        )

    def _tenant_key(self, base_url: str, public_key: str, secret_key: str) -> str:
        material = json.dumps([base_url, public_key, secret_key]).encode()
        return "langfuse:" + hmac.new(self._hmac_key, material, hashlib.sha256).hexdigest()[:32]
