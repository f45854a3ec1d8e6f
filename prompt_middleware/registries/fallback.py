"""`FallbackRegistry`: a second source that answers while the first one is down.

The fallback (typically a `FileRegistry` over a folder filled by `prompt-middleware pull`) is
asked only when the primary cannot answer: it failed, timed out, or raised
`RegistryUnavailable`. A primary that answers "not found" is believed. Prompts the fallback
serves carry `source="fallback"`: the middleware answers them with `x-prompt-source: fallback`,
and `CachedRegistry` neither lets them replace a stale copy from the primary nor keeps them
long, so the primary is asked again soon and wins as soon as it is back.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import anyio

from ..core.errors import InvalidPrompt, PromptNotFound, RegistryAuthError, RegistryUnavailable
from ..core.prompts import Prompt, PromptRef
from .base import PromptRegistry

__all__ = ["FALLBACK_SOURCE", "FallbackRegistry"]

logger = logging.getLogger("prompt_middleware.fallback")

FALLBACK_SOURCE = "fallback"


class FallbackRegistry:
    """Ask `primary`; when it is unavailable, answer from `fallback`.

    Args:
        primary: the registry of record (e.g. a `LangfuseRegistry`).
        fallback: the registry used while the primary is down (e.g. a `FileRegistry`).
        primary_timeout: seconds the primary may take before it counts as down. Keep it below
            the cache's `fetch_timeout` (10 s by default), which covers both calls.

    A primary that refuses our credentials (`RegistryAuthError`) or returns a malformed prompt
    is a configuration error, not an outage: the error is raised, the fallback not asked.
    `served_from_fallback` counts the answers the fallback gave; one warning is logged when an
    outage begins and one info line when the primary answers again.
    """

    def __init__(
        self,
        primary: PromptRegistry,
        fallback: PromptRegistry,
        *,
        primary_timeout: float | None = 5.0,
    ) -> None:
        if primary_timeout is not None and primary_timeout <= 0:
            raise ValueError("primary_timeout must be positive or None")
        self.primary = primary
        self.fallback = fallback
        self.primary_timeout = primary_timeout
        self.served_from_fallback = 0
        self._outage = False

    def __repr__(self) -> str:
        return f"FallbackRegistry({self.primary!r}, {self.fallback!r})"

    async def get_prompt(
        self, name: str, *, version: int | None = None, label: str | None = None
    ) -> Prompt:
        try:
            with anyio.fail_after(self.primary_timeout):
                prompt = await self.primary.get_prompt(name, version=version, label=label)
        except (PromptNotFound, RegistryAuthError, InvalidPrompt):
            self._primary_answered()
            raise
        except TimeoutError:
            reason = f"no answer within {self.primary_timeout} s"
        except RegistryUnavailable as exc:
            reason = exc.message
        except Exception as exc:  # the class only: an exception's text may hold secrets
            reason = type(exc).__name__
        else:
            self._primary_answered()
            return prompt
        return await self._from_fallback(PromptRef(name, version, label), reason)

    async def _from_fallback(self, ref: PromptRef, reason: str) -> Prompt:
        if not self._outage:
            self._outage = True
            logger.warning("Prompt registry unavailable (%s): serving from the fallback", reason)
        else:
            logger.debug("Prompt registry still unavailable for %s (%s)", ref, reason)
        try:
            prompt = await self.fallback.get_prompt(ref.name, version=ref.version, label=ref.label)
        except PromptNotFound:
            # The primary might have it: the client learns the registry is down, not that the
            # prompt does not exist.
            raise RegistryUnavailable(
                f"The prompt registry is unavailable and the fallback has no prompt {ref}."
            ) from None
        self.served_from_fallback += 1
        return replace(prompt, source=FALLBACK_SOURCE)

    def _primary_answered(self) -> None:
        if self._outage:
            self._outage = False
            logger.info("Prompt registry answers again: the fallback is no longer used")

    async def aclose(self) -> None:
        for registry in (self.primary, self.fallback):
            close = getattr(registry, "aclose", None)
            if close is not None:
                await close()
