"""Polling Langfuse for changed prompts: freshness without webhooks or Redis.

Every `interval` seconds the poller lists `GET /api/public/v2/prompts?fromUpdatedAt=<mark>`
(all pages) and hands the names whose `lastUpdatedAt` it has not seen before to `on_change`.
The high-water mark is the newest `lastUpdatedAt` Langfuse reported (its clock, not ours), and
each query reaches `overlap` seconds further back, so a version committed late or a clock step
is still seen; names already reported with the same `lastUpdatedAt` are not reported twice.

With Redis, workers elect one poller (`leader`); the others skip their turn, and the leader's
mark is shared so a newly elected one carries on where the last stopped.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from cachetools import LRUCache

from ...core.errors import PromptMiddlewareError, RegistryUnavailable
from ..langfuse import LangfuseRegistry
from ._langfuse_api import get_json

__all__ = ["DEFAULT_OVERLAP", "LIST_PATH", "Poller", "PollStats"]

logger = logging.getLogger("prompt_middleware.coherence.polling")

LIST_PATH = "/api/public/v2/prompts"
DEFAULT_OVERLAP = 10.0
_PAGE_LIMIT = 100
_MAX_PAGES = 100

OnChange = Callable[[list[str]], Awaitable[None]]
Leader = Callable[[], Awaitable[bool]]
LoadMark = Callable[[], Awaitable["str | None"]]
SaveMark = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PollStats:
    """Polls since start.

    Attributes:
        polls: listings completed (every page read).
        skipped: turns left to the elected poller of another worker.
        errors: listings that failed (Langfuse down, keys refused, a bad answer).
        changes: prompt names reported as changed.
    """

    polls: int = 0
    skipped: int = 0
    errors: int = 0
    changes: int = 0


class Poller:
    """Polls one Langfuse project's prompt list; see the module docstring.

    Args:
        registry: the `LangfuseRegistry` whose keys and client are used.
        interval: seconds between polls.
        on_change: awaited with the changed names after each poll that found some.
        overlap: seconds each query reaches back before the mark.
        leader: awaited before each poll; False skips it (another worker polls).
        load_mark, save_mark: read and store the shared mark (ISO 8601), e.g. in Redis.
        page_size: prompts asked for per page (`limit`).
        clock: wall clock, for the first mark only.
    """

    def __init__(
        self,
        registry: LangfuseRegistry,
        interval: float,
        on_change: OnChange,
        *,
        overlap: float = DEFAULT_OVERLAP,
        leader: Leader | None = None,
        load_mark: LoadMark | None = None,
        save_mark: SaveMark | None = None,
        page_size: int = _PAGE_LIMIT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not (interval > 0 and math.isfinite(interval)):
            raise ValueError("poll interval must be a positive number of seconds")
        if not (overlap >= 0 and math.isfinite(overlap)):
            raise ValueError("overlap must be a non-negative number of seconds")
        if page_size < 1:
            raise ValueError("page_size must be positive")
        self._page_size = page_size
        self._registry = registry
        self.interval = interval
        self._on_change = on_change
        self._overlap = dt.timedelta(seconds=overlap)
        self._leader = leader
        self._load_mark = load_mark
        self._save_mark = save_mark
        self._mark = dt.datetime.fromtimestamp(clock(), dt.timezone.utc)
        self._reported: LRUCache[tuple[str, str], None] = LRUCache(4096)
        self._leading = False
        self._failing = False
        self._counts = dict.fromkeys(PollStats.__slots__, 0)

    @property
    def stats(self) -> PollStats:
        return PollStats(**self._counts)

    async def run(self) -> None:
        """Poll every `interval` seconds until cancelled. Never raises."""
        while True:
            await anyio.sleep(self.interval)
            await self.tick()

    async def tick(self) -> list[str]:
        """One turn: poll unless another worker leads; the names reported changed."""
        if self._leader is not None:
            leading = await self._leader()
            if not leading:
                self._leading = False
                self._counts["skipped"] += 1
                return []
            if not self._leading and self._load_mark is not None:
                await self._adopt_shared_mark()
            self._leading = True
        try:
            changed = await self.poll_once()
        except PromptMiddlewareError as exc:
            self._counts["errors"] += 1
            if not self._failing:
                logger.warning("Polling Langfuse for changed prompts failed: %s", exc.message)
            self._failing = True
            return []
        if self._failing:
            logger.warning("Polling Langfuse for changed prompts works again")
            self._failing = False
        if changed:
            self._counts["changes"] += len(changed)
            await self._on_change(changed)
        return changed

    async def poll_once(self) -> list[str]:
        """List the prompts changed since the mark (every page); the newly changed names."""
        since = _iso(self._mark - self._overlap)
        newest = self._mark
        changed: dict[str, None] = {}
        page, pages = 1, 1
        while page <= min(pages, _MAX_PAGES):
            params = {"fromUpdatedAt": since, "page": str(page), "limit": str(self._page_size)}
            data = await get_json(self._registry, LIST_PATH, params)
            items, pages = _page(data)
            for item in items:
                name, updated = item.get("name"), item.get("lastUpdatedAt")
                if not isinstance(name, str) or not isinstance(updated, str):
                    continue
                when = _parse(updated)
                if when is not None and when > newest:
                    newest = when
                if (name, updated) not in self._reported:
                    self._reported[(name, updated)] = None
                    changed[name] = None
            page += 1
        self._counts["polls"] += 1
        self._mark = newest
        if self._save_mark is not None:
            await self._save_mark(_iso(newest))
        return list(changed)

    async def _adopt_shared_mark(self) -> None:
        assert self._load_mark is not None
        shared = _parse(await self._load_mark() or "")
        if shared is not None and shared < self._mark:
            # The previous leader got this far; reach back to it so nothing in between is lost.
            self._mark = shared


def _page(data: Any) -> tuple[list[dict[str, Any]], int]:
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise _bad_listing()
    meta = data.get("meta")
    pages = meta.get("totalPages") if isinstance(meta, dict) else None
    if isinstance(pages, bool) or not isinstance(pages, int):
        pages = 1
    return [item for item in data["data"] if isinstance(item, dict)], pages


def _bad_listing() -> PromptMiddlewareError:
    return RegistryUnavailable("Langfuse answered the prompt list with an unexpected shape.")


def _parse(text: str) -> dt.datetime | None:
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.timezone.utc)


def _iso(when: dt.datetime) -> str:
    text = when.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")
