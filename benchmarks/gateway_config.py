"""The configured gateway under wrk: client keys on, a model alias bound to a prompt, a fake
upstream on loopback; against the same upstream called directly. And the key check's own cost.

    .venv/bin/python benchmarks/gateway_config.py [--rounds 5] [--duration 3] [--keys 1]

Needs Debian's wrk and taskset. The upstream (`server_app:bare`: reads the body, answers a small
JSON body) and `prompt-middleware serve --config` (one worker) both run pinned to core 0; wrk
(`-t1 -c16`) runs on core 1. Targets, alternated in short rounds:

  direct    wrk -> upstream, the plain ~4.8 KB body (what the upstream gets anyway)
  alias     wrk -> gateway -> upstream: `"model": "assistant"` (an alias bound to the prompt),
            `Authorization: Bearer <key>`: key check, rewrite, forwarded with the upstream's key
  plain     wrk -> gateway -> upstream: the plain body with a key: key check and forwarding only
  flags     wrk -> `serve --upstream URL --prompts DIR` (no config, keys or aliases) -> upstream:
            the plain body; what the proxy costs without the config file's layers

Per round and target: server CPU µs per request (utime + stime from /proc ÷ requests) of the
gateway and of the upstream, and wrk's latency p50 / p99. Tables: medians over rounds [IQR].
Then, in-process, the key check alone (`ClientKeys.allows` on a uvicorn-shaped scope) and the
whole `GatewayApp` call with and without keys around a trivial app (CPU time, GC off).
Only 127.0.0.1 is used; every run is bounded by --duration.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
from _procs import cpu_seconds, free_port, pinned, stop, wrk_numbers, wrk_script
from _report import machine_info, print_machine, spread, table, write_json
from _workload import CHAT_PATH, OnceReceive, body_for, http_scope, make_prompt, sink_send

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KEY = "sk-benchmark-gateway-key"
UPSTREAM_KEY = "sk-benchmark-upstream-key"

LUA = wrk_script(
    """\
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
"""
)


@dataclass
class Process:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)


@dataclass
class Sample:
    gateway_cpu_us: float
    upstream_cpu_us: float
    p50_ms: float
    p99_ms: float
    rps: float


@dataclass
class Target:
    name: str
    server: Process  # the process wrk talks to
    body: bytes
    samples: list[Sample] = field(default_factory=list)


def write_gateway(tmp: Path, upstream_port: int, keys: int) -> Path:
    prompt = make_prompt()
    folder = tmp / "prompts" / "support"
    folder.mkdir(parents=True)
    (folder / "assistant.json").write_text(
        json.dumps(
            {
                "type": prompt.type,
                "prompt": list(prompt.prompt),
                "config": dict(prompt.config),
                "version": prompt.version,
                "labels": list(prompt.labels),
            }
        )
    )
    config = {
        "registry": {"files": str(tmp / "prompts")},
        "upstreams": {
            "fake": {"base_url": f"http://127.0.0.1:{upstream_port}/v1", "api_key": UPSTREAM_KEY}
        },
        "models": {"assistant": {"model": "gpt-4o-mini", "prompt_id": prompt.name}},
        "auth": {"keys": [KEY, *(f"sk-other-{i:04d}" for i in range(keys - 1))]},
        "server": {"log_level": "warning"},
    }
    path = tmp / "gateway.json"
    path.write_text(json.dumps(config))
    return path


def alias_body() -> bytes:
    data = json.loads(body_for("typical", "prompt"))
    del data["prompt_id"]
    data["model"] = "assistant"
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


@contextlib.contextmanager
def servers(tmp: Path, core: int | None, keys: int) -> Iterator[tuple[Process, Process, Process]]:
    started: list[Process] = []
    try:
        port = free_port()
        argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "--port", str(port),
                "--no-access-log", "--log-level", "warning", "server_app:bare"]  # fmt: skip
        upstream = Process("upstream", port, subprocess.Popen(pinned(core, argv), cwd=ROOT))
        started.append(upstream)
        config = write_gateway(tmp, port, keys)
        gport = free_port()
        argv = [sys.executable, "-m", "prompt_middleware", "serve", "--config", str(config),
                "--port", str(gport)]  # fmt: skip
        gateway = Process("gateway", gport, subprocess.Popen(pinned(core, argv), cwd=ROOT))
        started.append(gateway)
        fport = free_port()
        argv = [sys.executable, "-m", "prompt_middleware", "serve", "--upstream",
                f"http://127.0.0.1:{port}/v1", "--prompts", str(tmp / "prompts"),
                "--log-level", "warning", "--port", str(fport)]  # fmt: skip
        flags = Process("flags", fport, subprocess.Popen(pinned(core, argv), cwd=ROOT))
        started.append(flags)
        for process in started:
            wait_ready(process)
        yield upstream, gateway, flags
    finally:
        stop((process.proc for process in started), grace=15)


def wait_ready(process: Process, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    path = "/" if process.name == "upstream" else "/health/ready"
    while time.monotonic() < deadline:
        if process.proc.poll() is not None:
            raise RuntimeError(f"{process.name} exited with {process.proc.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://127.0.0.1:{process.port}{path}", timeout=1).status_code < 500:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{process.name} did not start")


def check(target: Target) -> None:
    response = httpx.post(
        f"http://127.0.0.1:{target.server.port}{CHAT_PATH}",
        content=target.body,
        headers={"content-type": "application/json", "authorization": f"Bearer {KEY}"},
    )
    if response.status_code != 200:
        raise RuntimeError(f"{target.name}: status {response.status_code} {response.text}")
    if (response.headers.get("x-prompt-name") is not None) != (target.name == "alias"):
        raise RuntimeError(f"{target.name}: unexpected prompt headers")
    refused = httpx.post(f"http://127.0.0.1:{target.server.port}{CHAT_PATH}", content=target.body)
    if target.name in ("alias", "plain") and refused.status_code != 401:
        raise RuntimeError(f"{target.name}: a request without a key got {refused.status_code}")


def run_wrk(target: Target, upstream: Process, tmp: Path, seconds: int, core: int | None) -> Sample:
    gateway = target.server
    body_file = tmp / f"{target.name}.json"
    body_file.write_bytes(target.body)
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file), "BENCH_KEY": KEY}
    url = f"http://127.0.0.1:{target.server.port}{CHAT_PATH}"
    argv = [
        "wrk",
        "-t1",
        "-c16",
        "--timeout",
        "10s",
        f"-d{seconds}s",
        "-s",
        str(tmp / "post.lua"),
        url,
    ]
    g0, u0 = gateway.cpu_seconds(), upstream.cpu_seconds()
    numbers = wrk_numbers(argv, core=core, env=env, timeout=seconds + 30)
    g1, u1 = gateway.cpu_seconds(), upstream.cpu_seconds()
    requests, duration_us, *errors, p50, p99 = numbers
    if requests == 0 or any(errors):
        raise RuntimeError(f"wrk against {target.name}: {requests} requests, errors {errors}")
    return Sample(
        gateway_cpu_us=0.0 if gateway is upstream else (g1 - g0) / requests * 1e6,
        upstream_cpu_us=(u1 - u0) / requests * 1e6,
        p50_ms=p50 / 1000,
        p99_ms=p99 / 1000,
        rps=requests / (duration_us / 1e6),
    )


# The key check in-process


def time_per_call(call: Any, n: int) -> float:
    """CPU µs per call of a synchronous `call`, GC off."""
    gc.collect()
    gc.disable()
    try:
        start = time.thread_time()
        for _ in range(n):
            call()
        return (time.thread_time() - start) / n * 1e6
    finally:
        gc.enable()


def key_check_costs(rounds: int, n: int = 20000) -> list[list[str]]:
    from prompt_middleware.gateway.app import ClientKeys, GatewayApp, _Router

    scope = http_scope(CHAT_PATH, 0)
    scope["headers"] = [
        (k, f"Bearer {KEY}".encode() if k == b"authorization" else v) for k, v in scope["headers"]
    ]
    rows = []
    for count in (1, 10, 100):
        keys = ClientKeys([KEY, *(f"sk-other-{i:04d}" for i in range(count - 1))])
        samples = [time_per_call(lambda keys=keys: keys.allows(scope), n) for _ in range(rounds)]
        rows.append([f"`ClientKeys.allows`, {count} key(s)", spread(samples).fmt(2, " µs")])

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

    def gateway(keys: ClientKeys | None) -> GatewayApp:
        router = _Router({"a": app}, "a")
        return GatewayApp(app, router, {}, keys=keys)  # type: ignore[arg-type]

    with_keys, without = gateway(ClientKeys([KEY])), gateway(None)

    async def batch(target: GatewayApp, count: int) -> float:
        gc.collect()
        gc.disable()
        try:
            start = time.thread_time()
            for _ in range(count):
                await target(scope, OnceReceive(b""), sink_send)
            return (time.thread_time() - start) / count * 1e6
        finally:
            gc.enable()

    added = []
    for _ in range(rounds):
        on = anyio.run(batch, with_keys, n)
        off = anyio.run(batch, without, n)
        added.append(on - off)
    rows.append(["`GatewayApp` call, 1 key − no keys", spread(added).fmt(2, " µs")])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--keys", type=int, default=1, help="client keys configured")
    parser.add_argument("--json", metavar="FILE", help="also write the raw results here")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get update && apt-get install -y wrk", file=sys.stderr)
        return 2
    ncpu = len(os.sched_getaffinity(0))
    server_core, client_core = (0, 1) if ncpu >= 2 and shutil.which("taskset") else (None, None)
    info = machine_info()
    print_machine(info)
    print(
        f"# gateway (1 worker) and upstream on core {server_core}, wrk -t1 -c16 on core "
        f"{client_core}; {args.rounds} rounds × {args.duration} s per target; "
        f"{args.keys} client key(s)"
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        (tmp / "post.lua").write_text(LUA, encoding="utf-8")
        with servers(tmp, server_core, args.keys) as (upstream, gateway, flags):
            plain = body_for("typical", "plain")
            targets = [
                Target("direct", upstream, plain),
                Target("alias", gateway, alias_body()),
                Target("plain", gateway, plain),
                Target("flags", flags, plain),
            ]
            for target in targets:
                check(target)
                run_wrk(target, upstream, tmp, 1, client_core)  # warm-up
            for r in range(args.rounds):
                for target in targets if r % 2 == 0 else targets[::-1]:
                    sample = run_wrk(target, upstream, tmp, args.duration, client_core)
                    target.samples.append(sample)
                    print(
                        f"  round {r + 1} {target.name:6}: {sample.rps:6.0f} req/s, gateway "
                        f"{sample.gateway_cpu_us:6.1f} µs/req, upstream "
                        f"{sample.upstream_cpu_us:6.1f} µs/req, p50 {sample.p50_ms:.2f} ms, "
                        f"p99 {sample.p99_ms:.2f} ms",
                        file=sys.stderr,
                    )

    direct = targets[0]
    rows = []
    for target in targets:
        s = target.samples

        def med(attr: str, samples: list[Sample] = s) -> Any:
            return spread([getattr(x, attr) for x in samples])

        ratio = spread(
            [
                (x.gateway_cpu_us + x.upstream_cpu_us) / d.upstream_cpu_us
                for x, d in zip(s, direct.samples, strict=True)
            ]
        )
        rows.append(
            [
                target.name,
                med("rps").fmt(0),
                med("gateway_cpu_us").fmt(1) if target.name != "direct" else "—",
                med("upstream_cpu_us").fmt(1),
                ratio.fmt(2, "×"),
                med("p50_ms").fmt(2),
                med("p99_ms").fmt(2),
            ]
        )
    headers = [
        "target",
        "req/s",
        "gateway CPU µs/req",
        "upstream CPU µs/req",
        "total CPU ÷ direct",
        "p50 ms",
        "p99 ms",
    ]
    print(f"\n## gateway vs the upstream directly: medians [IQR] of {args.rounds} rounds\n")
    print(table(headers, rows))
    costs = key_check_costs(max(args.rounds, 5))
    print("\n## the key check alone, in-process (CPU µs per call, median [IQR])\n")
    print(table(["what", "µs"], costs, right=1))
    print(f"\n# wall time {time.monotonic() - started:.0f} s")
    write_json(
        args.json,
        {
            "machine": info,
            "args": vars(args),
            "targets": {t.name: [vars(x) for x in t.samples] for t in targets},
            "key_check": costs,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
