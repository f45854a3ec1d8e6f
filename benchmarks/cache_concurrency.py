"""The prompt cache under concurrency, and the Langfuse SDK's own `get_prompt` cache beside it.

    .venv/bin/python benchmarks/cache_concurrency.py [--latency-ms 50] [--requests 1000]

1. Cold prompt: N concurrent requests for one prompt nobody has fetched yet. Goal: exactly one
   registry call (single-flight), every request answered 200.
2. Steady state with 1,000 prompts: load them (one call each), then 10 × 1,000 concurrent requests
   spread over all of them: no further registry calls, and the CPU cost per request.

Ours runs through the whole middleware (ASGI driven in-process) over (a) an in-memory registry
that answers after `--latency-ms`, on asyncio and trio, and (b) `LangfuseRegistry` against a fake
Langfuse HTTP server on 127.0.0.1 with the same latency. The SDK rows call langfuse's
`Langfuse.get_prompt` (its own TTL cache) against the same fake server, the ways an app would:
from N threads, through `anyio.to_thread.run_sync` (anyio's default 40 worker threads), and
directly from async code. Registry calls are counted by the registry / the fake server.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
from _fake_langfuse import FakeLangfuse, serving
from _report import machine_info, print_machine, table, write_json
from _workload import BareApp, OnceReceive, body_for, http_scope, make_prompt

from prompt_middleware import CachedRegistry, LangfuseRegistry, Prompt, PromptMiddleware

PK, SK = "pk-lf-bench", "sk-lf-bench"
STEADY_PROMPTS = 1000
STEADY_PASSES = 10


class SlowRegistry:
    """An in-memory registry that answers after `latency` seconds and counts its calls."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.calls: Counter[str] = Counter()
        self._base = make_prompt()

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    async def get_prompt(
        self, name: str, *, version: int | None = None, label: str | None = None
    ) -> Prompt:
        self.calls[name] += 1
        await anyio.sleep(self.latency)
        return dataclasses.replace(self._base, name=name)


def body_naming(name: str) -> bytes:
    data = json.loads(body_for("small"))
    data["prompt_id"] = name
    return json.dumps(data, separators=(",", ":")).encode()


@dataclass
class Burst:
    statuses: Counter[int]
    wall_ms: float
    cpu_us_per_request: float


async def burst(app: Any, bodies: Sequence[bytes]) -> Burst:
    """All `bodies` as concurrent requests through `app`; statuses, wall and CPU time."""
    statuses: Counter[int] = Counter()
    scope = http_scope(body_length=len(bodies[0]))

    async def one(body: bytes) -> None:
        async def send(message: Any) -> None:
            if message["type"] == "http.response.start":
                statuses[message["status"]] += 1

        await app(scope, OnceReceive(body), send)

    wall, cpu = time.perf_counter(), time.thread_time()
    async with anyio.create_task_group() as tg:
        for body in bodies:
            tg.start_soon(one, body)
    cpu = time.thread_time() - cpu
    return Burst(statuses, (time.perf_counter() - wall) * 1e3, cpu / len(bodies) * 1e6)


def fmt_statuses(statuses: Counter[int]) -> str:
    return ", ".join(f"{n}× {s}" for s, n in sorted(statuses.items()))


# -- ours ----------------------------------------------------------------------------------------


def ours_cold(backend: str, n: int, latency: float, url: str | None) -> list[str]:
    name = f"bench-cold-{backend}-{'http' if url else 'mem'}"
    counter: Callable[[], int]
    if url is None:
        registry: Any = SlowRegistry(latency)
        counter = lambda: registry.total  # noqa: E731
        what = "in-memory registry"
    else:
        registry = LangfuseRegistry(PK, SK, base_url=url, trust_env=False)
        fake_before = FAKE.total
        counter = lambda: FAKE.total - fake_before  # noqa: E731
        what = "LangfuseRegistry over HTTP"
    app = PromptMiddleware(BareApp(), registry=registry)

    async def main() -> Burst:
        try:
            return await burst(app, [body_naming(name)] * n)
        finally:
            await app.aclose()

    result = anyio.run(main, backend=backend)
    calls = counter()
    return [
        f"ours: middleware + CachedRegistry, {what} ({backend})",
        str(calls),
        "met" if calls == 1 else "NOT met",
        f"{result.wall_ms:.0f}",
        fmt_statuses(result.statuses),
    ]


def ours_steady(backend: str, latency: float) -> list[str]:
    registry = SlowRegistry(latency)
    app = PromptMiddleware(BareApp(), registry=registry)
    names = [f"bench-steady-{i:04d}" for i in range(STEADY_PROMPTS)]
    bodies = [body_naming(name) for name in names]
    cached = app.registry
    assert isinstance(cached, CachedRegistry)

    async def main() -> tuple[Burst, int, list[Burst], float]:
        load = await burst(app, bodies)
        loaded_calls = registry.total
        passes = []
        for i in range(STEADY_PASSES):
            passes.append(await burst(app, bodies[i:] + bodies[:i]))
        hits = []
        for _ in range(STEADY_PASSES):
            start = time.thread_time()
            for name in names:
                await cached.get_prompt(name)
            hits.append((time.thread_time() - start) / len(names) * 1e6)
        hit_us = sorted(hits)[len(hits) // 2]
        await app.aclose()
        return load, loaded_calls, passes, hit_us

    load, loaded_calls, passes, hit_us = anyio.run(main, backend=backend)
    statuses = sum((p.statuses for p in passes), Counter[int]())
    per_request = sorted(p.cpu_us_per_request for p in passes)[len(passes) // 2]
    return [
        f"ours: middleware + CachedRegistry ({backend})",
        f"{loaded_calls} ({load.wall_ms:.0f} ms)",
        str(registry.total - loaded_calls),
        f"{per_request:.1f} µs/request (task + middleware + app), {hit_us:.2f} µs/get_prompt hit",
        fmt_statuses(statuses),
    ]


# -- the Langfuse SDK --------------------------------------------------------------------------


def sdk_client(url: str) -> Any:
    from langfuse import Langfuse

    return Langfuse(public_key=PK, secret_key=SK, host=url, tracing_enabled=False)


def sdk_cold_threads(lf: Any, n: int, repeats: int) -> list[str]:
    """N threads released together ask for a cold prompt; repeated, as the count varies a lot."""
    calls, walls, errors = [], [], Counter[str]()
    for rep in range(repeats):
        name = f"bench-cold-sdk-threads-{rep}"
        before = FAKE.total
        barrier = threading.Barrier(n)

        def worker(name: str = name, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                lf.get_prompt(name, type="chat")
            except Exception as exc:
                errors[type(exc).__name__] += 1

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(n)]
        for t in threads:
            t.start()
        start = time.perf_counter()
        for t in threads:
            t.join(120)
        walls.append((time.perf_counter() - start) * 1e3)
        calls.append(FAKE.total - before)
    failed = sum(errors.values())
    return [
        f"Langfuse SDK get_prompt, {n} threads ({repeats} tries)",
        " / ".join(str(c) for c in calls),
        "met" if max(calls) == 1 else "NOT met",
        " / ".join(f"{w:.0f}" for w in walls),
        f"{n * repeats - failed} ok" + (f", errors {dict(errors)}" if errors else ""),
    ]


def sdk_cold_async(lf: Any, n: int, mode: str) -> list[str]:
    """SDK from async code: via anyio.to_thread (40 workers), or called directly (blocking)."""
    name = f"bench-cold-sdk-{mode}"
    before = FAKE.total
    call: Callable[[], Awaitable[Any]]
    if mode == "to_thread":
        call = partial(anyio.to_thread.run_sync, partial(lf.get_prompt, name, type="chat"))
    else:

        async def call() -> Any:
            # Blocking on purpose: this row shows what calling the sync SDK in a handler does.
            return lf.get_prompt(name, type="chat")

    async def main() -> tuple[float, float, int]:
        lag = 0.0
        done = anyio.Event()

        async def ticker() -> None:  # the longest the event loop could not run other tasks
            nonlocal lag
            last = time.perf_counter()
            while not done.is_set():
                await anyio.sleep(0.001)
                now = time.perf_counter()
                lag = max(lag, now - last)
                last = now

        ok = 0

        async def one() -> None:
            nonlocal ok
            await call()
            ok += 1

        start = time.perf_counter()
        async with anyio.create_task_group() as outer:
            outer.start_soon(ticker)
            await anyio.sleep(0.005)
            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    tg.start_soon(one)
            wall = time.perf_counter() - start
            done.set()
        return wall * 1e3, lag * 1e3, ok

    wall, lag, ok = anyio.run(main)
    calls = FAKE.total - before
    label = (
        "Langfuse SDK get_prompt via anyio.to_thread.run_sync (40 threads)"
        if mode == "to_thread"
        else "Langfuse SDK get_prompt called directly in async code"
    )
    return [
        label,
        str(calls),
        ("met, but blocks the event loop" if mode == "direct" else "met")
        if calls == 1
        else "NOT met",
        f"{wall:.0f}",
        f"{ok} ok; max event-loop stall {lag:.0f} ms",
    ]


def sdk_steady(lf: Any) -> list[str]:
    names = [f"bench-sdk-steady-{i:04d}" for i in range(STEADY_PROMPTS)]
    before = FAKE.total
    start = time.perf_counter()
    with_threads = 50
    chunks = [names[i::with_threads] for i in range(with_threads)]

    def load(chunk: list[str]) -> None:
        for name in chunk:
            lf.get_prompt(name, type="chat")

    threads = [threading.Thread(target=load, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    load_ms = (time.perf_counter() - start) * 1e3
    loaded = FAKE.total - before
    hits = []
    for _ in range(STEADY_PASSES):
        start_cpu = time.thread_time()
        for name in names:
            lf.get_prompt(name, type="chat")
        hits.append((time.thread_time() - start_cpu) / len(names) * 1e6)
    hit_us = sorted(hits)[len(hits) // 2]
    return [
        "Langfuse SDK get_prompt (loaded from 50 threads)",
        f"{loaded} ({load_ms:.0f} ms)",
        str(FAKE.total - before - loaded),
        f"{hit_us:.2f} µs/get_prompt hit",
        "-",
    ]


FAKE = FakeLangfuse(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=50.0, help="registry latency")
    parser.add_argument("--requests", type=int, default=1000, help="concurrent requests (cold)")
    parser.add_argument("--backends", default="asyncio,trio")
    parser.add_argument("--no-sdk", action="store_true", help="skip the Langfuse SDK rows")
    parser.add_argument("--sdk-repeats", type=int, default=3, help="tries of the SDK threads row")
    parser.add_argument("--json", metavar="FILE", help="also write the raw results here")
    args = parser.parse_args(argv)
    latency = args.latency_ms / 1e3
    FAKE.latency = latency
    backends = args.backends.split(",")
    logging.getLogger("langfuse").setLevel(logging.CRITICAL)  # its per-failure error logs

    info = machine_info()
    print_machine(info)
    print(f"# registry latency {args.latency_ms:.0f} ms; {args.requests} concurrent requests")
    started = time.monotonic()

    cold: list[list[str]] = []
    steady: list[list[str]] = []
    for backend in backends:
        cold.append(ours_cold(backend, args.requests, latency, None))
    with serving(FAKE) as url:
        for backend in backends:
            cold.append(ours_cold(backend, args.requests, latency, url))
        if not args.no_sdk:
            lf = sdk_client(url)
            try:
                cold.append(sdk_cold_threads(lf, args.requests, args.sdk_repeats))
                cold.append(sdk_cold_async(lf, args.requests, "to_thread"))
                cold.append(sdk_cold_async(lf, args.requests, "direct"))
                steady.append(sdk_steady(lf))
            finally:
                lf.shutdown()
    for backend in backends:
        steady.insert(len(steady) - (0 if args.no_sdk else 1), ours_steady(backend, latency))

    print(f"\n## Cold prompt: {args.requests} concurrent requests, nothing cached\n")
    print(
        table(
            ["who", "registry calls", "goal: exactly 1", "wall ms", "answers"],
            cold,
            right=1,
        )
    )
    print(
        f"\n## Steady state: {STEADY_PROMPTS} prompts, then {STEADY_PASSES} × "
        f"{STEADY_PROMPTS} concurrent requests over all of them\n"
    )
    print(
        table(
            ["who", "calls to load", "calls after load", "cost (CPU, median pass)", "answers"],
            steady,
            right=1,
        )
    )
    print(f"\n# wall time {time.monotonic() - started:.0f} s")
    write_json(args.json, {"machine": info, "args": vars(args), "cold": cold, "steady": steady})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
