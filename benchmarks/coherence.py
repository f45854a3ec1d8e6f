"""Invalidation latency across 2 replicas x 2 workers, and the idle cost of staying coherent.

    .venv/bin/python benchmarks/coherence.py [--changes 50] [--poll-changes 50] [--idle 60]

Everything is real and on loopback: `prompt-middleware serve` processes, a `redis-server`
(started here on a free port), and the test suite's fake Langfuse in a process of its own (with
one extra route, `POST /bench/add`, that adds a prompt version as an edit in Langfuse would).

"2 replicas x 2 workers" is four gateway processes with `server.workers: 1` on ports of their
own: a uvicorn worker is exactly such a process (its own cache, its own Redis subscriber), and
separate ports let the benchmark ask each worker, where a shared port would hide which one
answered.

1. Webhook + Redis: per change, add a version in Langfuse, post a signed webhook to one
   gateway, and from its 2xx answer ask all four (concurrently, each as soon as its last answer
   came back, 1 ms apart, over a raw keep-alive connection so the client's own CPU stays
   small) until every one serves the new version: the time of the last one's first new answer.
   p50 / p99 over `--changes`, after 3 unmeasured warm-up changes.
2. Polling at 1 s, no webhook: with Redis (one elected poller publishes what it finds) and
   without (each worker polls): from the edit until every worker serves it. Edits land at
   varied points of the poll cycle.
3. Idle CPU per gateway process, CPU seconds per minute over one shared `--idle` window, mean
   and max of each group: no coherence at all (the floor), Redis subscriber (+ webhook route),
   poller at 1 s without Redis, and Redis subscriber + poller at 1 s elected among the 4 (the
   max is the one that polls).

Target: p99 under 100 ms with Redis. The first lines printed name the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
from _procs import cpu_seconds
from starlette.types import Receive, Scope, Send

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prompt_middleware._asgi import read_body, send_json
from prompt_middleware.registries.coherence import SIGNATURE_HEADER, sign
from tests.fake_langfuse import FakeLangfuse
from tests.gateway_process import (
    Gateway,
    gateway_env,
    langfuse_gateway_config,
    serving,
    write_config,
)
from tests.redis_fixture import RedisServer
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
SECRET = "lf-whsec_" + "be" * 32
KEYS = ("pk-bench", "sk-bench")
PROJECT = "project-pk-bench"  # the fake's project id for KEYS
NAME = "bench/greet"
PROCESSES = 4  # 2 replicas x 2 workers
WARMUP = 3


# -- the fake Langfuse, in a process of its own ----------------------------------------------


class EditableFake:
    """The fake Langfuse plus `POST /bench/add {"name"}`: the next version, labelled production."""

    def __init__(self) -> None:
        self.fake = FakeLangfuse()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/bench/add":
            name = json.loads(await read_body(receive) or b"{}")["name"]
            added = self.fake.add_prompt(*KEYS, name, f"{name} edited at {time.time()}")
            await send_json(send, 200, {"version": added["version"]})
            return
        await self.fake(scope, receive, send)


def serve_fake(port: int) -> None:
    import uvicorn

    uvicorn.run(EditableFake(), host="127.0.0.1", port=port, log_level="warning")


@contextmanager
def fake_process() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--serve-fake", str(port)], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/api/public/projects", timeout=1)
                break
            except httpx.TransportError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the fake Langfuse did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(10)


# -- gateways ----------------------------------------------------------------------------------


def config(
    langfuse: str, redis: str | None, webhook: bool, poll: float | None, db: str
) -> dict[str, Any]:
    """A gateway on the fake Langfuse; with Redis (database `db`), a webhook route, polling."""
    return langfuse_gateway_config(
        langfuse,
        KEYS,
        NAME,
        ttl=3600,
        redis_url=None if redis is None else redis.rsplit("/", 1)[0] + "/" + db,
        poll_interval=poll,
        webhook=webhook,
    )


def start(
    stack: ExitStack, folder: Path, name: str, data: dict[str, Any], count: int
) -> list[Gateway]:
    path = write_config(folder / f"{name}.json", data)
    env = gateway_env(LANGFUSE_WEBHOOK_SECRET=SECRET)
    return [
        stack.enter_context(serving("--config", str(path), env=env, wait_for="/health/ready"))
        for _ in range(count)
    ]


class Probe:
    """One keep-alive HTTP/1.1 connection to a gateway, asking which version of NAME it serves.

    Raw bytes rather than httpx: the client shares the machine's CPUs with the gateways it
    measures, and httpx spends about a millisecond of them per request.
    """

    BODY = json.dumps({"model": "m", "prompt_id": NAME, "messages": []}).encode()

    def __init__(self, gateway: Gateway) -> None:
        url = httpx.URL(gateway.url)
        self._address = (url.host, url.port or 80)
        self._request = (
            f"POST /v1/chat/completions HTTP/1.1\r\nhost: {url.host}:{url.port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(self.BODY)}\r\n\r\n"
        ).encode() + self.BODY
        self._stream: anyio.abc.SocketStream | None = None
        self._buffer = b""

    async def version(self) -> int:
        if self._stream is None:
            self._stream = await anyio.connect_tcp(*self._address)
        await self._stream.send(self._request)
        while b"\r\n\r\n" not in self._buffer:
            self._buffer += await self._stream.receive()
        head, _, rest = self._buffer.partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines)
        length = int(headers["content-length"])
        while len(rest) < length:
            rest += await self._stream.receive()
        self._buffer = rest[length:]
        if status.split()[1] != "200":
            raise RuntimeError(f"{status}: {rest[:length]!r}")
        return int(headers["x-prompt-version"])

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()


class Driver:
    def __init__(self, client: httpx.AsyncClient, langfuse: str, gateways: list[Gateway]) -> None:
        self.client = client
        self.langfuse = langfuse
        self.gateways = gateways
        self.probes = [Probe(g) for g in gateways]

    async def edit(self) -> int:
        response = await self.client.post(self.langfuse + "/bench/add", json={"name": NAME})
        return int(response.json()["version"])

    async def all_serve(self, version: int) -> list[float]:
        """When each gateway first answered with `version` (or newer), perf_counter times."""
        seen: list[float] = [0.0] * len(self.gateways)

        async def watch(index: int) -> None:
            while await self.probes[index].version() < version:  # noqa: ASYNC110
                await anyio.sleep(0.001)
            seen[index] = time.perf_counter()

        async with anyio.create_task_group() as tg:
            for index in range(len(self.gateways)):
                tg.start_soon(watch, index)
        return seen

    async def aclose(self) -> None:
        for probe in self.probes:
            await probe.aclose()

    async def webhook(self, gateway: Gateway, delivery: str) -> None:
        body = json.dumps(
            {
                "id": delivery,
                "timestamp": "2026-12-07T00:00:00.000Z",
                "type": "prompt-version",
                "apiVersion": "v1",
                "action": "created",
                "prompt": {"name": NAME, "version": 0, "projectId": PROJECT, "labels": []},
            }
        ).encode()
        headers = {SIGNATURE_HEADER: sign(body, SECRET), "content-type": "application/json"}
        response = await self.client.post(
            gateway.url + "/webhooks/langfuse", content=body, headers=headers
        )
        assert response.status_code == 200, response.text


async def webhook_latency(driver: Driver, changes: int) -> list[float]:
    latencies = []
    for i in range(WARMUP + changes):
        version = await driver.edit()
        await driver.webhook(driver.gateways[i % 2], f"bench-{i}-{time.time()}")  # either replica
        answered = time.perf_counter()
        seen = await driver.all_serve(version)
        if i >= WARMUP:
            latencies.append(max(seen) - answered)
    return latencies


async def polling_latency(driver: Driver, changes: int) -> list[float]:
    latencies = []
    rng = random.Random(13)
    await driver.all_serve(0)
    for _ in range(changes):
        await anyio.sleep(rng.uniform(0.2, 1.2))  # land at varied points of the poll cycle
        edited = time.perf_counter()
        version = await driver.edit()
        seen = await driver.all_serve(version)
        latencies.append(max(seen) - edited)
    return latencies


def idle_cpu(groups: dict[str, list[Gateway]], seconds: float) -> dict[str, tuple[float, float]]:
    """CPU seconds per minute per process (mean and max of each group), one shared window."""
    before = {n: [cpu_seconds(g.process.pid) for g in gs] for n, gs in groups.items()}
    time.sleep(seconds)
    result = {}
    for name, gateways in groups.items():
        used = [cpu_seconds(g.process.pid) - b for g, b in zip(gateways, before[name], strict=True)]
        per_minute = [u * 60.0 / seconds for u in used]
        result[name] = (statistics.mean(per_minute), max(per_minute))
    return result


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def describe(label: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"| {label} | {len(ms)} | {pct(ms, 0.5):.1f} | {pct(ms, 0.99):.1f} | "
        f"{statistics.mean(ms):.1f} | {max(ms):.1f} |"
    )


async def measure(args: argparse.Namespace, folder: Path) -> None:
    executable = shutil.which("redis-server")
    if executable is None:
        raise SystemExit("needs redis-server (apt-get install -y redis-server)")
    redis = RedisServer(executable, free_port())
    redis.start()
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {load()}")
    try:
        with ExitStack() as stack, fake_process() as langfuse:
            async with httpx.AsyncClient(timeout=10) as client:
                await client.post(langfuse + "/bench/add", json={"name": NAME})
                url = redis.url
                # One setup at a time, so the other's processes do not share the 2 x 2's CPUs.
                webhook = start(stack, folder, "webhook", config(langfuse, url, True, None, "1"), 4)
                print(f"started the webhook + Redis gateways; {load()}")
                driver = Driver(client, langfuse, webhook)
                web = await webhook_latency(driver, args.changes)
                await driver.aclose()
                print(f"after the webhook runs: {load()}")
                polled = start(stack, folder, "poll", config(langfuse, url, False, 1.0, "2"), 4)
                print(f"started the polling + Redis gateways; {load()}")
                driver = Driver(client, langfuse, polled)
                poll = await polling_latency(driver, args.poll_changes)
                await driver.aclose()
                print(f"after the polling + Redis runs: {load()}")
                alone = start(stack, folder, "alone", config(langfuse, None, False, 1.0, "0"), 4)
                print(f"started the polling-only gateways; {load()}")
                driver = Driver(client, langfuse, alone)
                poll_alone = await polling_latency(driver, args.poll_changes)
                await driver.aclose()
                print(f"after the polling-only runs: {load()}")
                print()
                print(
                    "| invalidation, 2 replicas x 2 workers | changes | p50 ms | p99 ms | mean ms "
                    "| max ms |"
                )
                print("|---|---|---|---|---|---|")
                print(describe("webhook + Redis: 2xx answer → all 4 serve the new version", web))
                print(describe("polling at 1 s + Redis (1 elected poller): edit → all 4", poll))
                print(
                    describe(
                        "polling at 1 s, no Redis (each worker polls): edit → all 4", poll_alone
                    )
                )
                print()
                if args.idle <= 0:
                    return
                plain = start(stack, folder, "plain", config(langfuse, None, False, None, "0"), 1)
                await anyio.sleep(2.0)
                print(f"idle window of {args.idle:.0f} s; {load()}")
                cpu = idle_cpu(
                    {
                        "no coherence (the floor)": plain,
                        "Redis subscriber + webhook route": webhook,
                        "poller at 1 s, no Redis": alone,
                        "Redis subscriber + poller at 1 s, elected": polled,
                    },
                    args.idle,
                )
                print()
                print("| idle gateway process | CPU s per minute, mean | max |")
                print("|---|---|---|")
                for name, (mean, most) in cpu.items():
                    print(f"| {name} | {mean:.3f} | {most:.3f} |")
                print()
                print(f"end: {load()}")
    finally:
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--poll-changes", type=int, default=50)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds; 0 skips it")
    parser.add_argument("--serve-fake", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake is not None:
        serve_fake(args.serve_fake)
        return
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        anyio.run(measure, args, Path(folder))


if __name__ == "__main__":
    main()
