"""The middleware under a real server: uvicorn on one pinned core, wrk on the other.

    .venv/bin/python benchmarks/server.py [--rounds 7] [--duration 3] [--scenarios prompt,plain]

Needs Debian's wrk (`apt-get install -y wrk`) and taskset (util-linux). Two uvicorn processes
run side by side on core 0, one serving the bare app and one the middleware in front of the same
app; `wrk -t1 -c16` runs on core 1 and alternates between them in short rounds (ABAB…, the order
flipped every round). Per round and server: requests per second from wrk, and the server's CPU
time per request from /proc/<pid>/stat (utime + stime) divided by the requests wrk completed.
The tables show the medians over rounds of middleware ÷ bare, with the interquartile range.

Scenarios (the typical ~4 KB body of benchmarks/_workload.py):
  prompt       a prompt_id request, warm cache: parse, compile, serialise (case d)
  plain        no prompt fields: forwarded unparsed after the pre-filter (case c)
  plain_word   no prompt fields, but a message starts with "prompt": parsed, forwarded (c-parse)
Only 127.0.0.1 is used; every run is bounded by --duration.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _procs import cpu_seconds, free_port, pinned, stop, wrk_numbers, wrk_script
from _report import Spread, machine_info, print_machine, spread, table, write_json
from _workload import CHAT_PATH, body_for

HERE = Path(__file__).resolve().parent
CPU_TARGET = 1.10  # issue #6: server CPU per request with the middleware ≤ 1.10× bare

LUA = wrk_script(
    """\
wrk.headers["Authorization"] = "Bearer sk-benchmark"
"""
)


@dataclass
class Server:
    name: str
    target: str
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CHAT_PATH}"

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)


@dataclass
class Sample:
    rps: float
    cpu_us: float
    p50_ms: float
    requests: int


@dataclass
class ScenarioResult:
    scenario: str
    body_bytes: int
    bare: list[Sample] = field(default_factory=list)
    mw: list[Sample] = field(default_factory=list)

    def ratio(self, attr: str) -> Spread:
        return spread(
            [getattr(m, attr) / getattr(b, attr) for m, b in zip(self.mw, self.bare, strict=True)]
        )

    def median(self, which: str, attr: str) -> float:
        return spread([getattr(s, attr) for s in getattr(self, which)]).median

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "body_bytes": self.body_bytes,
            "bare": [vars(s) for s in self.bare],
            "middleware": [vars(s) for s in self.mw],
            "rps_ratio": self.ratio("rps").as_dict(),
            "cpu_per_request_ratio": self.ratio("cpu_us").as_dict(),
        }


@contextlib.contextmanager
def running(servers: list[Server], core: int | None, http_impl: str) -> Iterator[None]:
    try:
        for server in servers:
            argv = [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                str(HERE),
                "--host",
                "127.0.0.1",
                "--port",
                str(server.port),
                "--http",
                http_impl,
                "--lifespan",
                "on",
                "--no-access-log",
                "--log-level",
                "warning",
                server.target,
            ]
            server.proc = subprocess.Popen(pinned(core, argv), cwd=HERE.parent)
        for server in servers:
            wait_ready(server)
        yield
    finally:
        stop(server.proc for server in servers)


def wait_ready(server: Server, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert server.proc is not None
        if server.proc.poll() is not None:
            raise RuntimeError(f"uvicorn for {server.name} exited with {server.proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn for {server.name} did not start") from None
            time.sleep(0.1)


def check(server: Server, body: bytes, scenario: str) -> None:
    """One request by hand: the scenario must answer 200 and (prompt) carry the prompt headers."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("POST", CHAT_PATH, body, {"content-type": "application/json"})
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"{server.name}/{scenario}: status {response.status}")
    rewritten = response.getheader("x-prompt-version") is not None
    if rewritten != (scenario == "prompt" and server.name == "middleware"):
        raise RuntimeError(f"{server.name}/{scenario}: unexpected x-prompt-version header")


def run_wrk(server: Server, lua: Path, body_file: Path, seconds: int, core: int | None) -> Sample:
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file)}
    argv = ["wrk", "-t1", "-c16", f"-d{seconds}s", "-s", str(lua), server.url]
    before = server.cpu_seconds()
    numbers = wrk_numbers(argv, core=core, env=env, timeout=seconds + 30)
    after = server.cpu_seconds()
    requests, duration_us, *errors, p50_us, _ = numbers
    if requests == 0 or any(errors):
        raise RuntimeError(f"wrk against {server.name}: {requests} requests, errors {errors}")
    return Sample(
        rps=requests / (duration_us / 1e6),
        cpu_us=(after - before) / requests * 1e6,
        p50_ms=p50_us / 1000,
        requests=requests,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--scenarios", default="prompt,plain")
    parser.add_argument("--size", default="typical", choices=["small", "typical", "large"])
    parser.add_argument("--http", default="auto", help="uvicorn --http (auto, h11, httptools)")
    parser.add_argument("--json", metavar="FILE", help="also write the raw results here")
    args = parser.parse_args(argv)

    if shutil.which("wrk") is None:
        print("wrk not found: apt-get update && apt-get install -y wrk", file=sys.stderr)
        return 2
    ncpu = len(os.sched_getaffinity(0))
    server_core, client_core = (0, 1) if ncpu >= 2 and shutil.which("taskset") else (None, None)
    http_impl = args.http
    if http_impl == "auto":
        http_impl = "httptools" if importlib.util.find_spec("httptools") else "h11"

    info = machine_info()
    print_machine(info)
    pinning = (
        f"uvicorn on core {server_core}, wrk on core {client_core}"
        if server_core is not None
        else "NOT pinned (fewer than 2 cores or no taskset)"
    )
    print(
        f"# uvicorn --http {http_impl}, 1 process each; wrk -t1 -c16; {pinning}; "
        f"{args.rounds} rounds × {args.duration} s per server and scenario"
    )

    servers = [
        Server("bare", "server_app:bare", free_port()),
        Server("middleware", "server_app:middleware", free_port()),
    ]
    started = time.monotonic()
    results: list[ScenarioResult] = []
    with tempfile.TemporaryDirectory() as tmp, running(servers, server_core, http_impl):
        lua = Path(tmp, "post.lua")
        lua.write_text(LUA, encoding="utf-8")
        for scenario in args.scenarios.split(","):
            body = body_for(args.size, scenario)
            body_file = Path(tmp, f"{scenario}.json")
            body_file.write_bytes(body)
            for server in servers:
                check(server, body, scenario)
                run_wrk(server, lua, body_file, 1, client_core)  # warm-up
            result = ScenarioResult(scenario, len(body))
            for r in range(args.rounds):
                order = servers if r % 2 == 0 else servers[::-1]
                for server in order:
                    sample = run_wrk(server, lua, body_file, args.duration, client_core)
                    (result.bare if server.name == "bare" else result.mw).append(sample)
                print(
                    f"  {scenario:10} round {r + 1}: rps {result.bare[-1].rps:7.0f} / "
                    f"{result.mw[-1].rps:7.0f}  cpu µs/req {result.bare[-1].cpu_us:6.1f} / "
                    f"{result.mw[-1].cpu_us:6.1f}  (bare / middleware)",
                    file=sys.stderr,
                )
            results.append(result)

    headers = [
        "scenario",
        "body",
        "bare req/s",
        "mw req/s",
        "req/s mw ÷ bare [IQR]",
        "bare CPU µs/req",
        "mw CPU µs/req",
        "CPU/req mw ÷ bare [IQR]",
        "target ≤ 1.10×",
    ]
    rows = []
    for res in results:
        cpu = res.ratio("cpu_us")
        rows.append(
            [
                res.scenario,
                f"{res.body_bytes / 1000:.1f} KB",
                f"{res.median('bare', 'rps'):.0f}",
                f"{res.median('mw', 'rps'):.0f}",
                res.ratio("rps").fmt(3, "×"),
                f"{res.median('bare', 'cpu_us'):.1f}",
                f"{res.median('mw', 'cpu_us'):.1f}",
                cpu.fmt(3, "×"),
                "met" if cpu.median <= CPU_TARGET else "NOT met",
            ]
        )
    print(f"\n## uvicorn ({http_impl}) + wrk: medians of {args.rounds} interleaved rounds\n")
    print(table(headers, rows))
    print(f"\n# wall time {time.monotonic() - started:.0f} s")
    write_json(
        args.json,
        {
            "machine": info,
            "args": vars(args),
            "http": http_impl,
            "results": [r.as_dict() for r in results],
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
