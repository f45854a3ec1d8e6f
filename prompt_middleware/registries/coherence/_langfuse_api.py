"""The two Langfuse public API calls coherence needs besides fetching prompts.

- `GET /api/public/projects`: the project an API key pair belongs to (its `id` is the
  `projectId` of webhook payloads).
- `GET /api/public/v2/prompts?fromUpdatedAt=…&page=…&limit=…`: prompts changed since a time.

Both go through the `LangfuseRegistry`'s own HTTP client and credentials, so no key is copied.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from ...core.errors import RegistryAuthError, RegistryUnavailable
from ..langfuse import LangfuseRegistry

__all__ = ["get_json", "project_id"]

logger = logging.getLogger("prompt_middleware.coherence")


async def get_json(
    registry: LangfuseRegistry, path: str, params: dict[str, str] | None = None
) -> Any:
    """GET `path` on the registry's Langfuse with its credentials; the JSON body.

    Raises `RegistryAuthError` on 401/403 and `RegistryUnavailable` on anything else that is
    not a 2xx JSON answer. Error texts name the status only, never a key.
    """
    request = httpx.Request(
        "GET",
        registry.base_url + path,
        params=params or {},
        headers={
            "accept": "application/json",
            "authorization": registry._authorization.value,
            "user-agent": "prompt-middleware",
        },
        extensions={"timeout": httpx.Timeout(registry._timeout).as_dict()},
    )
    try:
        # Not cancelled from outside mid-pool: that leaks connection slots (encode/httpcore#1093).
        response = await registry.send_once(request)
    except (httpx.HTTPError, TimeoutError) as exc:
        raise RegistryUnavailable(
            f"Langfuse at {registry.base_url} is unavailable ({type(exc).__name__}) for {path}."
        ) from None
    if response.status_code in (401, 403):
        raise RegistryAuthError(f"Langfuse at {registry.base_url} rejected the API keys.")
    if not 200 <= response.status_code < 300:
        raise RegistryUnavailable(
            f"Langfuse at {registry.base_url} answered HTTP {response.status_code} for {path}."
        )
    try:
        return response.json()
    except ValueError:
        raise RegistryUnavailable(
            f"Langfuse answered {path} with a body that is not JSON."
        ) from None


async def project_id(registry: LangfuseRegistry) -> str:
    """The id of the Langfuse project the registry's API keys belong to."""
    data = await get_json(registry, "/api/public/projects")
    projects = data.get("data") if isinstance(data, dict) else None
    if not isinstance(projects, list) or not projects:
        raise RegistryUnavailable("Langfuse listed no project for the API keys.")
    first = projects[0]
    found = first.get("id") if isinstance(first, dict) else None
    if not isinstance(found, str) or not found:
        raise RegistryUnavailable("Langfuse listed a project without an id.")
    return found
