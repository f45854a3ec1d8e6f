"""Instructions per request under valgrind's callgrind: deterministic, immune to noisy neighbours.

    .venv/bin/python benchmarks/callgrind.py [--size typical] [--cases b,c,c-parse,d] [-n 400]

For each case the same child process (PYTHONHASHSEED=0, asyncio, after imports and warm-up) runs
either nothing or N requests of one variant (bare app, middleware, or the stdlib floor); the
difference of the instruction totals divided by N is the cost per request. Reported: instructions
the middleware adds per request, and that as a multiple of the floor's. Instruction counts track
CPU work but not cache misses, so they read lower than timed ratios; use them to compare two
versions of the library (a change that saves instructions saves time), not as absolute µs.
Needs `valgrind` (Debian: `apt-get install -y valgrind`); about 1-2 minutes.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
from _report import machine_info, print_machine, table, write_json
from _workload import (
    SIZES,
    BareApp,
    OnceReceive,
    body_for,
    floor_once,
    http_scope,
    make_middleware,
    sink_send,
)
from inprocess import CASES, TARGET_FLOOR

HERE = Path(__file__).resolve()
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def child(variant: str, case_key: str, size: str, n: int) -> None:
    case = next(c for c in CASES if c.key == case_key)
    body = body_for(size, case.shape)
    scope = http_scope(case.path, len(body))
    bare = BareApp()
    middleware = make_middleware(BareApp())

    async def run(app: Any, k: int) -> None:
        for _ in range(k):
            await app(scope, OnceReceive(body), sink_send)

    async def main() -> None:
        await run(bare, 20)  # identical warm-up in every child
        await run(middleware, 20)
        for _ in range(20):
            floor_once(body)
        if variant == "floor":
            for _ in range(n):
                floor_once(body)
        else:
            await run(bare if variant == "bare" else middleware, n)

    anyio.run(main)


def instructions(variant: str, case: str, size: str, n: int) -> int:
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        str(HERE),
        "--child",
        variant,
        case,
        size,
        str(n),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    match = _COLLECTED.search(out.stderr)
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"callgrind run failed ({variant} {case}):\n{out.stderr[-2000:]}")
    return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="typical", choices=SIZES)
    parser.add_argument("--cases", default="b,c,c-parse,d")
    parser.add_argument("-n", type=int, default=400, help="requests per measured run")
    parser.add_argument("--jobs", type=int, default=2, help="valgrind processes at once")
    parser.add_argument("--json", metavar="FILE", help="also write the raw results here")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        variant, case, size, n = args.child
        child(variant, case, size, int(n))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind not found: apt-get install -y valgrind", file=sys.stderr)
        return 2

    info = machine_info()
    print_machine(info)
    n = args.n
    n_large = max(4, n // 40) if args.size == "large" else n
    print(f"# callgrind, PYTHONHASHSEED=0, asyncio, {args.size} body, N={n_large} per run")
    started = time.monotonic()
    cases = args.cases.split(",")
    jobs = [("none", c, 0) for c in cases] + [
        (v, c, n_large) for c in cases for v in ("bare", "middleware", "floor")
    ]
    with ThreadPoolExecutor(args.jobs) as pool:
        counts = dict(
            zip(
                [(v, c) for v, c, _ in jobs],
                pool.map(lambda j: instructions(j[0], j[1], args.size, j[2]), jobs),
                strict=True,
            )
        )

    rows, raw = [], []
    for key in cases:
        case = next(c for c in CASES if c.key == key)
        base = counts[("none", key)]
        per = {v: (counts[(v, key)] - base) / n_large for v in ("bare", "middleware", "floor")}
        added = per["middleware"] - per["bare"]
        limit = TARGET_FLOOR.get(key)
        rows.append(
            [
                f"{key}: {case.title}",
                f"{per['bare']:,.0f}",
                f"{per['middleware']:,.0f}",
                f"{added:,.0f}",
                f"{per['floor']:,.0f}",
                f"{added / per['floor']:.3f}×",
                f"≤ {limit:.1f}×" if limit is not None else "-",
            ]
        )
        raw.append({"case": key, **per, "added": added})
    print(f"\n## Instructions per request ({args.size} body)\n")
    print(
        table(
            ["case", "bare", "middleware", "added", "floor", "added ÷ floor", "target"],
            rows,
            right=1,
        )
    )
    print(f"\n# wall time {time.monotonic() - started:.0f} s")
    write_json(args.json, {"machine": info, "args": vars(args), "results": raw})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
