"""What metrics and tracing add under a real server: uvicorn on one pinned core, wrk on the other.

    .venv/bin/python benchmarks/observability_server.py [--rounds 5] [--duration 3]

`server.py`'s method (needs wrk and taskset): three uvicorn processes side by side on core 0,
the bare app (`server_app:bare`), the middleware with observability off (`server_app:middleware`)
and on (`_observed_app:app`: metrics, spans batched to an exporter that drops them), all answering
the `prompt` scenario (a warm rewrite); wrk alternates between them in short rounds. Per round:
the server's CPU time per request. Reported: on ÷ off for the whole request (what a gateway
operator sees), and what "on" adds as a share of the rewrite's own server-side cost
(`(on - off) / (off - bare)`, the in-process benchmark's measure). `BENCH_OBSERVE=metrics`,
`tracing` or `tracing,simple` (a synchronous span processor) turns on only that part.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from _procs import free_port
from _report import machine_info, print_machine, spread, table, write_json
from _workload import body_for
from server import LUA, Server, check, run_wrk, running

NAMES = ("bare", "off", "on")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk run")
    parser.add_argument("--json", metavar="FILE", help="also write the raw results here")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get update && apt-get install -y wrk", file=sys.stderr)
        return 2
    pinned = len(os.sched_getaffinity(0)) >= 2 and shutil.which("taskset") is not None
    server_core, client_core = (0, 1) if pinned else (None, None)
    http_impl = "httptools" if importlib.util.find_spec("httptools") else "h11"
    info = machine_info()
    print_machine(info)
    print(f"# uvicorn --http {http_impl}; wrk -t1 -c16; {args.rounds} rounds × {args.duration} s")

    servers = {
        "bare": Server("bare", "server_app:bare", free_port()),
        "off": Server("middleware", "server_app:middleware", free_port()),
        "on": Server("middleware", "_observed_app:app", free_port()),
    }
    cpu: dict[str, list[float]] = {name: [] for name in NAMES}
    rps: dict[str, list[float]] = {name: [] for name in NAMES}
    body = body_for("typical", "prompt")
    with (
        tempfile.TemporaryDirectory() as tmp,
        running(list(servers.values()), server_core, http_impl),
    ):
        lua = Path(tmp, "post.lua")
        lua.write_text(LUA, encoding="utf-8")
        body_file = Path(tmp, "prompt.json")
        body_file.write_bytes(body)
        for server in servers.values():
            check(server, body, "prompt")
            run_wrk(server, lua, body_file, 1, client_core)  # warm-up
        for r in range(args.rounds):
            order = list(NAMES) if r % 2 == 0 else list(reversed(NAMES))
            for name in order:
                sample = run_wrk(servers[name], lua, body_file, args.duration, client_core)
                cpu[name].append(sample.cpu_us)
                rps[name].append(sample.rps)
            print(
                f"  round {r + 1}: cpu µs/req "
                + " / ".join(f"{name} {cpu[name][-1]:.1f}" for name in NAMES),
                file=sys.stderr,
            )
    whole = spread([on / off for on, off in zip(cpu["on"], cpu["off"], strict=True)])
    added = spread(
        [
            (on - off) / (off - bare)
            for on, off, bare in zip(cpu["on"], cpu["off"], cpu["bare"], strict=True)
        ]
    )
    rows = [
        [name, f"{spread(cpu[name]).median:.1f}", f"{spread(rps[name]).median:.0f}"]
        for name in NAMES
    ]
    print("\n## Server CPU per request, medians over rounds\n")
    print(table(["server", "CPU µs/req", "req/s"], rows))
    print("\n## Metrics + tracing on\n")
    print(
        table(
            ["measure", "median [IQR]"],
            [
                ["CPU per request, on ÷ off", whole.fmt(3, "×")],
                [
                    "added to the rewrite's own cost",
                    f"{added.median * 100:+.1f} % [{added.q1 * 100:+.1f}–{added.q3 * 100:+.1f}]",
                ],
            ],
        )
    )
    result: dict[str, Any] = {"machine": info, "args": vars(args), "cpu_us": cpu, "rps": rps}
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
