"""Invalidation latency across 2 replicas x 2 workers, and the idle cost of staying coherent.

    .venv/bin/python benchmarks/coherence.py [--changes 50] [--poll-changes 10] [--idle 20]

Four `CachedRegistry` + `Coherence` "workers" run in one process on one event loop, each with its
own cache, sharing a real `redis-server` (started here on a free loopback port). The prompt
source is the test suite's fake Langfuse on a loopback uvicorn thread.

1. Webhook + Redis: each change adds a prompt version in the fake, posts a signed webhook to
   worker 0 (in-process ASGI) and measures from the webhook's 2xx answer until (a) every cache
   has dropped its entry (the message reached it) and (b) every cache serves the new version
   (each refetches from the fake; polled every 1 ms). p50 / p99 over `--changes`.
2. Polling at 1 s (no webhook): from the change until every worker serves it.
3. Idle CPU, process CPU seconds per minute over `--idle` seconds: the process alone, with the
   four subscribers, and with the four subscribers plus one elected poller at 1 s.
Target: p99 under 100 ms with Redis.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prompt_middleware.registries.cache import CachedRegistry
from prompt_middleware.registries.coherence import SIGNATURE_HEADER, Coherence, sign
from prompt_middleware.registries.langfuse import LangfuseRegistry
from tests.fake_langfuse import FakeLangfuse, running_fake
from tests.redis_fixture import RedisServer
from tests.servers import free_port
from tests.test_coherence_webhook import SECRET, payload

WORKERS = 4  # 2 replicas x 2 workers: each its own cache and Redis connection


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def invalidations(worker: Coherence) -> int:
    counts = worker.cache.stats.invalidations
    return counts["webhook"] + counts["pubsub"]


async def dropped_everywhere(workers: list[Coherence], count: int) -> None:
    while not all(invalidations(w) >= count for w in workers):  # noqa: ASYNC110
        await anyio.sleep(0.001)


async def serving_all(workers: list[Coherence], version: int) -> None:
    while True:
        versions = [(await w.cache.get_prompt("greet")).version for w in workers]
        if all(v == version for v in versions):
            return
        await anyio.sleep(0.001)


async def webhook_latency(  # (dropped everywhere, serving the new version everywhere)
    fake: FakeLangfuse, langfuse: LangfuseRegistry, redis: str, n: int
) -> tuple[list[float], list[float]]:
    workers = [
        Coherence(
            CachedRegistry(langfuse, ttl=3600),
            webhook_secrets=[SECRET],
            redis_url=redis,
            project_id="project-pk",
        )
        for _ in range(WORKERS)
    ]
    latencies: list[float] = []
    dropped: list[float] = []
    async with anyio.create_task_group() as tg:
        for w in workers:
            tg.start_soon(w.run)
        while not all(w.fanout is not None and w.fanout.up for w in workers):  # noqa: ASYNC110 (state changed by other tasks and threads)
            await anyio.sleep(0.01)
        await serving_all(workers, fake_version(fake))
        app = workers[0].webhook_app
        assert app is not None
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://w0") as client:
            for i in range(n):
                fake.add_prompt("pk", "sk", "greet", f"v{i}")
                body = payload(delivery=f"bench-{i}", project="project-pk")
                response = await client.post(
                    "/", content=body, headers={SIGNATURE_HEADER: sign(body, SECRET)}
                )
                assert response.status_code == 200
                answered = time.perf_counter()
                await dropped_everywhere(workers, i + 1)
                dropped.append(time.perf_counter() - answered)
                await serving_all(workers, fake_version(fake))
                latencies.append(time.perf_counter() - answered)
        tg.cancel_scope.cancel()
    return dropped, latencies


async def polling_latency(
    fake: FakeLangfuse, langfuse: LangfuseRegistry, redis: str, n: int
) -> list[float]:
    workers = [
        Coherence(
            CachedRegistry(langfuse, ttl=3600),
            redis_url=redis,
            poll_interval=1.0,
            project_id="project-pk",
            prefix="bench-poll",
        )
        for _ in range(WORKERS)
    ]
    latencies = []
    async with anyio.create_task_group() as tg:
        for w in workers:
            tg.start_soon(w.run)
        await serving_all(workers, fake_version(fake))
        for i in range(n):
            await anyio.sleep(0.37)  # land changes at varied points of the poll cycle
            fake.add_prompt("pk", "sk", "greet", f"p{i}")
            changed = time.perf_counter()
            await serving_all(workers, fake_version(fake))
            latencies.append(time.perf_counter() - changed)
        tg.cancel_scope.cancel()
    return latencies


async def idle_cpu(
    langfuse: LangfuseRegistry, redis: str, seconds: float
) -> tuple[float, float, float]:
    """CPU seconds per minute: idle process, 4 idle subscribers, 4 subscribers + the poller."""
    start = time.process_time()
    await anyio.sleep(seconds)
    per_minute = 60.0 / seconds
    results = [(time.process_time() - start) * per_minute]
    for poll_interval in (None, 1.0):
        workers = [
            Coherence(
                CachedRegistry(langfuse, ttl=3600),
                redis_url=redis,
                poll_interval=poll_interval,
                project_id="project-pk",
                prefix=f"bench-idle-{poll_interval}",
            )
            for _ in range(WORKERS)
        ]
        async with anyio.create_task_group() as tg:
            for w in workers:
                tg.start_soon(w.run)
            await anyio.sleep(1.0)  # connected
            start = time.process_time()
            await anyio.sleep(seconds)
            results.append((time.process_time() - start) * per_minute)
            tg.cancel_scope.cancel()
    return results[0], results[1], results[2]


def fake_version(fake: FakeLangfuse) -> int:
    return len(fake.project("pk", "sk")["greet"])


async def main(args: argparse.Namespace) -> None:
    executable = shutil.which("redis-server")
    if executable is None:
        raise SystemExit("needs redis-server (apt-get install -y redis-server)")
    server = RedisServer(executable, free_port())
    server.start()
    fake = FakeLangfuse()
    fake.add_prompt("pk", "sk", "greet", "v0")
    try:
        with running_fake(fake) as url:
            async with LangfuseRegistry("pk", "sk", base_url=url) as langfuse:
                dropped, web = await webhook_latency(fake, langfuse, server.url, args.changes)
                print(
                    f"webhook + Redis, {WORKERS} caches, {len(web)} changes, from the 2xx answer: "
                    f"every cache dropped it p50 {pct(dropped, 0.5) * 1000:.1f} ms / p99 "
                    f"{pct(dropped, 0.99) * 1000:.1f} ms; every cache serving the new version "
                    f"(4 refetches from the fake Langfuse) p50 {pct(web, 0.5) * 1000:.1f} ms / "
                    f"p99 {pct(web, 0.99) * 1000:.1f} ms"
                )
                poll = await polling_latency(fake, langfuse, server.url, args.poll_changes)
                print(
                    f"polling at 1 s, {WORKERS} caches, {len(poll)} changes: "
                    f"p50 {pct(poll, 0.5) * 1000:.0f} ms, p99 {pct(poll, 0.99) * 1000:.0f} ms, "
                    f"mean {statistics.mean(poll) * 1000:.0f} ms"
                )
                base, subscribers, polling = await idle_cpu(langfuse, server.url, args.idle)
                print(
                    f"idle CPU per minute ({args.idle:.0f} s measured): {base:.3f} s idle process, "
                    f"{subscribers:.3f} s with {WORKERS} subscribers, {polling:.3f} s with "
                    f"{WORKERS} subscribers + 1 elected poller at 1 s (the fake Langfuse it polls "
                    "runs in this process and is counted too)"
                )
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--poll-changes", type=int, default=10)
    parser.add_argument("--idle", type=float, default=20.0)
    anyio.run(main, parser.parse_args())
