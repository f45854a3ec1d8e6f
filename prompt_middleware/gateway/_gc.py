"""The garbage collector of a gateway process, set once it has started.

CPython collects its youngest generation every 700 net allocations of container objects (2,000
from 3.13); a proxied request makes a few hundred, so the collector ran every request or two,
and each full collection walked every object the process had built at startup (config, prompts,
modules).
Measured with `benchmarks/gateway.py` at 32 connections: p99 17.9 → 9.9 ms and CPU per request
−7 % with the startup objects frozen and a threshold of 10,000 (benchmarks/README.md).
Reference counting still frees nearly everything at once; the threshold only spaces out the
search for cycles.
"""

from __future__ import annotations

import gc
import logging

__all__ = ["settle_collector"]

logger = logging.getLogger("prompt_middleware.gateway")


def settle_collector(threshold: int) -> None:
    """Freeze what startup built and collect the young generation every `threshold`
    allocations (0: leave the collector as Python set it)."""
    if threshold <= 0:
        return
    gc.collect()
    # Out of every later collection's way: startup objects live as long as the process.
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(threshold, older, oldest)
    logger.debug(
        "garbage collector: %d startup objects frozen, threshold %d",
        gc.get_freeze_count(),
        threshold,
    )
