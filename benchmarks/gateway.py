"""The standalone gateway under load: `UpstreamProxy` in front of a fast upstream, vs that upstream.

    .venv/bin/python benchmarks/gateway.py [--connections 1,8,32,128] [--rounds 3] [--duration 4]
        [--variant NAME=[PATH][:http[:loop[:transport[:gc[:access]]]]] ...] [--chunks 100]
        [--soak SECONDS] [--relay] [--litellm]

Needs Debian's wrk (installed on demand: `apt-get install -y wrk`) and taskset. A fake OpenAI
upstream (`_fast_upstream.py`, ~10 µs of CPU per answer) and `wrk -t1` share core 1; each gateway
variant (`_gateway_server.py`: `build_app` of a config file under one uvicorn process, as
`prompt-middleware serve --config` runs it, minus uvicorn's access log) sits alone on core 0.
Per round, connection count and target, one wrk run; per run: req/s, latency p50/p99 from
wrk, and the target's server CPU time per request = Δ(utime + stime) from /proc/<pid>/stat ÷
requests completed. Targets are interleaved (the order flips every round) so that drift hits
each alike. Tables show medians over
rounds. Any wrk error or non-2xx answer is reported in the errors column (and fails the run).

Requests: the typical ~4 KB `prompt_id` body of `_workload.py` (warm cache: the gateway parses,
compiles and re-serialises it) for the gateway; the same bytes sent straight to the upstream for
the "upstream directly" row. Streaming: the same request with `"stream":true`; the upstream
answers `--chunks` SSE events (and, for the baseline, 1), one every `--gap-ms` ms so that each
arrives in a read of its own (0: all in one write); per-event cost =
(CPU/stream with N events − with 1) ÷ (N − 1).

Variants compare versions and stacks in one run: NAME=PATH puts a checkout's directory first on
PYTHONPATH (default: this one); http is h11 or httptools, loop asyncio or uvloop (default: what
is installed, as `serve` picks), transport auto, httpx or aiohttp (versions with a choice), and
an experiment on the garbage collector (`freeze` or `freeze,THRESHOLD`), and the access log:
`access` for uvicorn's, `ours` for the gateway's own line per request as `serve` writes it at
its default log level, `both` for the two (as `serve` wrote them before uvicorn's was turned
off); to a file here.
`--litellm` adds LiteLLM's proxy (`_litellm.py`: installed on demand into a venv of its own; one
uvicorn worker on the gateway's core) doing the same job with its Langfuse prompt management
against a fake Langfuse: the same bytes, `prompt_id` and `prompt_variables`, its model pointed at
the same upstream. Optional: when it does not install or start, its rows are left out. In the
SSE part it sends one event more than the upstream (a last one with `finish_reason`), for 1 and
N events alike, so the per-event cost is unaffected.
`--soak 300` then runs the first variant for that long at 32 connections, sampling its RSS.
Only 127.0.0.1 is used; every run is bounded by --duration.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
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

import _litellm
from _procs import cpu_seconds, free_port, pinned, stop, wrk_numbers, wrk_script
from _report import machine_info, print_machine, spread, table, write_json
from _workload import CHAT_PATH, PROMPT_NAME, body_for, make_prompt

HERE = Path(__file__).resolve().parent
RELAY = "TCP relay (floor)"
ROOT = HERE.parent
PAGE = os.sysconf("SC_PAGE_SIZE")
LOGS = Path(tempfile.gettempdir())

LUA = wrk_script(
    """\
wrk.headers["Authorization"] = "Bearer sk-benchmark"
wrk.headers["x-chunks"] = os.getenv("BENCH_CHUNKS") or "20"
wrk.headers["x-chunk-gap-ms"] = os.getenv("BENCH_GAP_MS") or "0"
"""
)


@dataclass
class Target:
    name: str
    argv: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    library: str = ""
    start_timeout: float = 30.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CHAT_PATH}"

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def rss_mb(self) -> float:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * PAGE / 2**20


@dataclass
class Sample:
    rps: float
    cpu_us: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


def wait_ready(target: Target, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert target.proc is not None
        if target.proc.poll() is not None:
            log = (LOGS / f"{target.port}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{target.name} exited with {target.proc.returncode}:\n{log}")
        try:
            with socket.create_connection(("127.0.0.1", target.port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{target.name} did not start") from None
            time.sleep(0.1)


@contextlib.contextmanager
def running(targets: list[Target], cores: dict[str, int | None]) -> Iterator[None]:
    try:
        for target in targets:
            env = {**os.environ, **target.env}
            core = cores.get(target.name, cores.get("*"))
            # Their stderr goes to a file: asyncio logs a line per write to a socket wrk closed.
            log = open(LOGS / f"{target.port}.log", "wb")  # noqa: SIM115 - closed with the process
            target.proc = subprocess.Popen(
                pinned(core, target.argv), cwd=ROOT, env=env, stdout=log, stderr=log
            )
            log.close()
        for target in targets:
            wait_ready(target, target.start_timeout)
        yield
    finally:
        stop(target.proc for target in targets)


def request(target: Target, body: bytes, chunks: int = 20) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=10)
    try:
        conn.request(
            "POST",
            CHAT_PATH,
            body,
            {"content-type": "application/json", "x-chunks": str(chunks)},
        )
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


def check(target: Target, body: bytes, stream_body: bytes, gateway: bool) -> None:
    status, headers, data = request(target, body)
    if status != 200 or (gateway and headers.get("x-prompt-version") != "3"):
        raise RuntimeError(f"{target.name}: status {status}, headers {headers}, {data[:200]!r}")
    status, headers, data = request(target, stream_body, chunks=5)
    if status != 200 or data.count(b"data: ") != 6 or not data.endswith(b"data: [DONE]\n\n"):
        raise RuntimeError(f"{target.name}: stream status {status}: {data[:300]!r}")


def run_wrk(
    target: Target,
    lua: Path,
    body_file: Path,
    connections: int,
    seconds: int,
    *,
    core: int | None,
    chunks: int = 20,
    gap_ms: float = 0,
) -> Sample:
    env = {
        **os.environ,
        "BENCH_BODY_FILE": str(body_file),
        "BENCH_CHUNKS": str(chunks),
        "BENCH_GAP_MS": str(gap_ms),
    }
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(lua),
        target.url,
    ]
    before = target.cpu_seconds()
    numbers = wrk_numbers(argv, core=core, env=env, timeout=seconds + 60)
    after = target.cpu_seconds()
    requests, duration_us, *errors, p50_us, p99_us = numbers
    return Sample(
        rps=requests / (duration_us / 1e6),
        cpu_us=(after - before) / max(requests, 1) * 1e6,
        p50_ms=p50_us / 1000,
        p99_ms=p99_us / 1000,
        requests=requests,
        errors=sum(errors),
    )


def write_config(tmp: Path, upstream_port: int) -> Path:
    prompt = make_prompt()
    prompts = tmp / "prompts"
    (prompts / PROMPT_NAME).parent.mkdir(parents=True)
    (prompts / f"{PROMPT_NAME}.json").write_text(
        json.dumps(
            {
                "name": prompt.name,
                "version": prompt.version,
                "type": "chat",
                "prompt": [dict(m) for m in prompt.prompt if not isinstance(m, str)],
                "config": dict(prompt.config),
                "labels": list(prompt.labels),
            }
        ),
        encoding="utf-8",
    )
    config = tmp / "gateway.yaml"
    config.write_text(
        json.dumps(
            {
                "registry": {"files": str(prompts)},
                "upstreams": {
                    "fast": {
                        "base_url": f"http://127.0.0.1:{upstream_port}/v1",
                        "api_key": "sk-upstream",
                    }
                },
                "server": {"host": "127.0.0.1", "port": 4000},
            }
        ),
        encoding="utf-8",
    )
    return config


def parse_variant(spec: str, config: Path) -> Target:
    name, _, rest = spec.partition("=")
    path, http, loop, transport, gc, log = ([*rest.split(":"), "", "", "", "", ""])[:6]
    library = str(Path(path).resolve()) if path else str(ROOT)
    argv = [sys.executable, str(HERE / "_gateway_server.py"), str(config), "0"]
    options = (("--http", http), ("--loop", loop), ("--transport", transport), ("--gc", gc))
    for flag, value in options:
        if value:
            argv += [flag, value]
    # access: uvicorn's access line; ours: the gateway's own (as serve logs now); both: the two
    # (as serve logged guarded requests before).
    if log in ("access", "both"):
        argv.append("--access-log")
    if log in ("ours", "both"):
        argv.append("--our-log")
    port = free_port()
    argv[3] = str(port)
    env = {"PYTHONPATH": library}
    return Target(name or "gateway", argv, port, env, library=library)


def ensure_wrk() -> None:
    if shutil.which("wrk") is None:
        print("wrk not found: installing Debian's wrk", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=False, capture_output=True)
        if shutil.which("wrk") is None:
            subprocess.run(["apt-get", "update"], check=False, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "wrk"], check=True, capture_output=True)


def _row(name: str, conns: int, samples: list[Sample]) -> list[str]:
    cpu = spread([s.cpu_us for s in samples])
    return [
        name,
        str(conns),
        f"{spread([s.rps for s in samples]).median:.0f}",
        f"{cpu.median / 1000:.3f} [{cpu.q1 / 1000:.3f}–{cpu.q3 / 1000:.3f}]",
        f"{spread([s.p50_ms for s in samples]).median:.2f}",
        f"{spread([s.p99_ms for s in samples]).median:.2f}",
        str(sum(s.errors for s in samples)),
    ]


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0912, C901
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", default="1,8,32,128")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    parser.add_argument("--variant", action="append", default=[], metavar="SPEC")
    parser.add_argument("--chunks", type=int, default=100, help="SSE events per stream; 0: skip")
    parser.add_argument("--stream-connections", type=int, default=32)
    parser.add_argument(
        "--gap-ms", type=float, default=1.0, help="ms between SSE events (0: all in one write)"
    )
    parser.add_argument("--no-direct", action="store_true", help="skip the upstream-only rows")
    parser.add_argument(
        "--relay",
        action="store_true",
        help="also measure a bare TCP relay on uvloop (_relay.py): the floor of any Python proxy",
    )
    parser.add_argument(
        "--litellm",
        action="store_true",
        help="also measure LiteLLM's proxy with Langfuse prompt management (_litellm.py)",
    )
    parser.add_argument("--soak", type=float, default=0, help="seconds at 32 connections")
    parser.add_argument("--json", metavar="FILE", help="also write the raw results here")
    args = parser.parse_args(argv)

    ensure_wrk()
    ncpu = len(os.sched_getaffinity(0))
    pin = ncpu >= 2 and shutil.which("taskset") is not None
    gw_core, load_core = (0, 1) if pin else (None, None)
    info = machine_info()
    print_machine(info)
    connections = [int(c) for c in args.connections.split(",")]

    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    litellm_python = _litellm.ensure_venv() if args.litellm else None
    with tempfile.TemporaryDirectory() as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        up_port = free_port()
        config = write_config(tmp, up_port)
        upstream = Target(
            "upstream directly",
            [sys.executable, str(HERE / "_fast_upstream.py"), str(up_port)],
            up_port,
        )
        variants = [parse_variant(v, config) for v in args.variant or ["gateway="]]
        for v in variants:
            print(f"# variant {v.name}: library {v.library}; {' '.join(v.argv[4:]) or 'auto'}")
        if args.relay:
            relay_port = free_port()
            relay_argv = [sys.executable, str(HERE / "_relay.py"), str(relay_port), str(up_port)]
            variants.insert(0, Target(RELAY, relay_argv, relay_port))
            print(f"# {RELAY}: _relay.py, bytes passed on both ways, no HTTP")
        litellm: Target | None = None
        langfuse = _litellm.FakeLangfuse()
        recorder = _litellm.RecordingUpstream()
        if litellm_python is not None:
            langfuse_url = stack.enter_context(_litellm.serving(langfuse))
            litellm_config = _litellm.write_config(
                tmp / "litellm.yaml",
                f"http://127.0.0.1:{up_port}",
                stack.enter_context(_litellm.serving(recorder)),
                langfuse_url,
            )
            litellm_port = free_port()
            litellm = Target(
                _litellm.LITELLM,
                _litellm.argv(litellm_python, litellm_config, litellm_port),
                litellm_port,
                _litellm.environment(langfuse_url),
                start_timeout=120.0,
            )
            print(
                f"# {_litellm.LITELLM}: {' '.join(_litellm.REQUIREMENTS)}, one uvicorn worker, "
                "Langfuse prompt management against a fake Langfuse (_litellm.py)"
            )
        print(
            f"# wrk -t1 and the upstream on core {load_core}, each gateway alone on core "
            f"{gw_core}; {args.rounds} rounds × {args.duration} s per target and connection count"
        )
        cores: dict[str, int | None] = {"upstream directly": load_core, "*": gw_core}
        body = body_for("typical", "prompt")
        stream_body = body.replace(b'"stream":false', b'"stream":true')
        assert stream_body != body
        lua = tmp / "post.lua"
        lua.write_text(LUA, encoding="utf-8")
        body_file = tmp / "body.json"
        body_file.write_bytes(body)
        stream_file = tmp / "stream.json"
        stream_file.write_bytes(stream_body)
        direct_body = tmp / "direct.json"
        direct_body.write_bytes(body)

        with running([upstream, *variants], cores):
            for v in variants:
                check(v, body, stream_body, gateway=v.name != RELAY)
                run_wrk(v, lua, body_file, 8, 1, core=load_core)  # warm-up
            if litellm is not None:
                try:
                    stack.enter_context(running([litellm], cores))
                    seen = _litellm.check(litellm.port, body, stream_body, langfuse, recorder)
                    run_wrk(litellm, lua, body_file, 8, 1, core=load_core)  # warm-up
                except (RuntimeError, OSError) as error:
                    print(f"LiteLLM skipped: {error}", file=sys.stderr)
                    stop([litellm.proc])
                else:
                    print(f"# {_litellm.LITELLM} checked: {json.dumps(seen)}")
                    results["litellm_check"] = seen
                    variants.append(litellm)
            targets = variants if args.no_direct else [upstream, *variants]
            samples: dict[tuple[str, int], list[Sample]] = {}
            for r in range(args.rounds):
                order = targets if r % 2 == 0 else targets[::-1]
                for conns in connections:
                    for target in order:
                        s = run_wrk(target, lua, body_file, conns, args.duration, core=load_core)
                        samples.setdefault((target.name, conns), []).append(s)
                        print(
                            f"  round {r + 1} c={conns:<3} {target.name:18} {s.rps:8.0f} req/s "
                            f"{s.cpu_us:8.1f} µs CPU/req p50 {s.p50_ms:6.2f} p99 {s.p99_ms:7.2f}"
                            f" ms errors {s.errors}",
                            file=sys.stderr,
                        )
            rows = [
                _row(name, conns, samples[(name, conns)])
                for name in [t.name for t in targets]
                for conns in connections
            ]
            print(f"\n## prompt requests, typical body: medians of {args.rounds} rounds\n")
            print(
                table(
                    [
                        "target",
                        "connections",
                        "req/s",
                        "server CPU ms/req [IQR]",
                        "p50 ms",
                        "p99 ms",
                        "errors",
                    ],
                    rows,
                )
            )
            ratio_rows = []
            for v in variants:
                base = spread([s.cpu_us for s in samples[(v.name, connections[0])]]).median
                ratio_rows.append(
                    [
                        v.name,
                        *(
                            f"{spread([s.cpu_us for s in samples[(v.name, c)]]).median / base:.2f}×"
                            for c in connections
                        ),
                    ]
                )
            print(f"\n## CPU/request relative to {connections[0]} connection(s)\n")
            print(table(["variant", *(f"c={c}" for c in connections)], ratio_rows, right=1))
            if litellm in variants:
                print(f"\n# the fake Langfuse got, in all: {json.dumps(langfuse.seen())}")
                results["litellm_langfuse"] = langfuse.seen()
            results["load"] = {
                f"{name}|{conns}": [vars(s) for s in ss] for (name, conns), ss in samples.items()
            }

            if args.chunks > 1:
                stream_rows = []
                stream_samples: dict[str, dict[int, list[Sample]]] = {}
                for r in range(args.rounds):
                    for v in variants if r % 2 == 0 else variants[::-1]:
                        for n in (1, args.chunks):
                            s = run_wrk(
                                v,
                                lua,
                                stream_file,
                                args.stream_connections,
                                args.duration,
                                core=load_core,
                                chunks=n,
                                gap_ms=args.gap_ms,
                            )
                            stream_samples.setdefault(v.name, {}).setdefault(n, []).append(s)
                for v in variants:
                    one = stream_samples[v.name][1]
                    many = stream_samples[v.name][args.chunks]
                    per_chunk = spread(
                        [
                            (m.cpu_us - o.cpu_us) / (args.chunks - 1)
                            for m, o in zip(many, one, strict=True)
                        ]
                    )
                    stream_rows.append(
                        [
                            v.name,
                            f"{spread([s.cpu_us for s in one]).median / 1000:.3f}",
                            f"{spread([s.cpu_us for s in many]).median / 1000:.3f}",
                            per_chunk.fmt(1, " µs"),
                            str(sum(s.errors for s in one + many)),
                        ]
                    )
                print(
                    f"\n## SSE through the gateway, {args.stream_connections} connections: "
                    f"1 vs {args.chunks} events per stream, {args.gap_ms:g} ms apart\n"
                )
                print(
                    table(
                        [
                            "variant",
                            "CPU ms/stream, 1 event",
                            f"CPU ms/stream, {args.chunks} events",
                            "CPU per event [IQR]",
                            "errors",
                        ],
                        stream_rows,
                        right=1,
                    )
                )
                results["stream"] = {
                    name: {str(n): [vars(s) for s in ss] for n, ss in by_n.items()}
                    for name, by_n in stream_samples.items()
                }

            if args.soak > 0:
                v = variants[0]
                rss = [v.rss_mb()]
                soak: list[Sample] = []
                end = time.monotonic() + args.soak
                while time.monotonic() < end:
                    step = min(30.0, max(1.0, end - time.monotonic()))
                    soak.append(run_wrk(v, lua, body_file, 32, int(step), core=load_core))
                    rss.append(v.rss_mb())
                total = sum(s.requests for s in soak)
                errors = sum(s.errors for s in soak)
                print(
                    f"\n## soak: {v.name}, 32 connections, {args.soak:.0f} s, {total} requests, "
                    f"{errors} errors\n\nRSS MB every ~30 s: "
                    + ", ".join(f"{x:.1f}" for x in rss)
                    + f"\np99 ms per step: {', '.join(f'{s.p99_ms:.1f}' for s in soak)}"
                )
                results["soak"] = {"rss_mb": rss, "steps": [vars(s) for s in soak]}

    print(f"\n# wall time {time.monotonic() - started:.0f} s")
    write_json(args.json, {"machine": info, "args": vars(args), "results": results})
    bad = [k for k, ss in results.get("load", {}).items() if any(s["errors"] for s in ss)]
    if bad:
        print(f"errors in: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
