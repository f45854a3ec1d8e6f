"""What metrics and tracing add to a warm rewrite, in-process.

    .venv/bin/python benchmarks/observability.py [--rounds 25] [--backends asyncio,trio]
                                                 [--size typical] [--json FILE]

Case d of `inprocess.py` (a prompt request, warm cache) is timed in interleaved rounds, the same
middleware instance each time, with observability in each state:

    off       no `enable()`: the state when the extras are not installed (each hook is one `if`)
    guard     `enable(metrics=False, tracing=False)`: the per-request bookkeeping alone
    metrics   `enable(metrics=True, tracing=False)` on a private CollectorRegistry
    api-only  `enable(tracing=True)` with opentelemetry-api's default provider (no SDK: no-op)
    both-api  metrics + api-only tracing: the extras installed, no SDK configured
    tracing   `enable(tracing=True)`, an SDK TracerProvider whose exporter drops every span
    both      metrics + tracing as above

and the bare app alone. Per round, the rewrite's own cost is `off - bare`; a state adds
`(state - off) / (off - bare)` to it (target: both < 10 %). The access log is off throughout
(its cost is that of one logging call, and only when INFO is enabled for it).

`--callgrind` counts instructions instead (valgrind; deterministic, immune to neighbours): per
state, a child process runs 0 or N warm requests; the difference over N is the cost per request.
It also counts one bare SDK span (`one_span`: start, make current, seven attributes, end) for
scale, and `both` less that span: what our code adds around what the SDK itself costs.

"Not installed" costs the hooks' `if` checks only: the script times those three attribute checks
(middleware, cache, upstream proxy) on their own and shows them as a share of the rewrite.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio
from _report import machine_info, print_machine, spread, table, write_json
from _workload import (
    CHAT_PATH,
    BareApp,
    OnceReceive,
    body_for,
    http_scope,
    make_middleware,
    sink_send,
)
from inprocess import calibrate, time_app
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry

from prompt_middleware import observability

STATES = ("off", "guard", "metrics", "api-only", "both-api", "tracing", "both")
TARGET_ADDED = 0.10


class DropSpans(SpanExporter):
    """An exporter that does nothing: the SDK's cost without the network's."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(DropSpans()))


# As many as the rewrite span carries (four prompt attributes, label, cache result, outcome).
FLOOR_ATTRIBUTES = {"a": "b", "c": 1, "d": "e", "f": 2, "g": "h", "i": "j", "k": "l"}


def one_span(tracer: trace.Tracer) -> None:
    """A bare SDK span (start, make current, seven attributes, end): what the SDK itself costs
    per span, whoever starts it."""
    span = tracer.start_span("floor")
    token = otel_context.attach(trace.set_span_in_context(span))
    otel_context.detach(token)
    span.set_attributes(FLOOR_ATTRIBUTES)
    span.end()


def span_floor(n: int) -> float:
    """Seconds for n bare SDK spans (`one_span`)."""
    tracer = PROVIDER.get_tracer("floor")
    start = time.thread_time()
    for _ in range(n):
        one_span(tracer)
    return time.thread_time() - start


def setters() -> dict[str, Callable[[], None]]:
    registry = CollectorRegistry()
    provider = PROVIDER

    def state(**options: Any) -> Callable[[], None]:
        def apply() -> None:
            observability.enable(access_log=False, registry=registry, **options)

        return apply

    return {
        "off": observability.disable,
        "guard": state(metrics=False, tracing=False),
        "metrics": state(metrics=True, tracing=False),
        "api-only": state(metrics=False, tracing=True),
        "both-api": state(metrics=True, tracing=True),
        "tracing": state(metrics=False, tracing=True, tracer_provider=provider),
        "both": state(metrics=True, tracing=True, tracer_provider=provider),
    }


def hook_checks(n: int) -> float:
    """Seconds for n requests' worth of the hooks' checks while off (3 per request)."""
    module = observability
    start = time.thread_time()
    for _ in range(n):
        if module.active is not None:
            raise AssertionError
        if module.active is not None:
            raise AssertionError
        if module.active is not None:
            raise AssertionError
    return time.thread_time() - start


def run(backend: str, size: str, rounds: int, warmup: int, batch_s: float) -> dict[str, Any]:
    body = body_for(size, "prompt")
    bare = BareApp()
    middleware = make_middleware(bare)
    scope = http_scope(CHAT_PATH, len(body))
    setting = setters()
    for name in STATES:  # warm every path: the cache miss, first spans, first series
        setting[name]()
        time_app(backend, middleware, scope, body, 5)
    observability.disable()

    def timer(name: str) -> Callable[[int], float]:
        if name == "bare":
            return lambda k: time_app(backend, bare, scope, body, k)

        def timed(k: int) -> float:
            setting[name]()
            try:
                return time_app(backend, middleware, scope, body, k)
            finally:
                observability.disable()

        return timed

    names = ["bare", *STATES]
    timers = {name: timer(name) for name in names}
    ns = {name: calibrate(timers[name], batch_s) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    checks: list[float] = []
    floors: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(warmup + rounds):
            k = r % len(names)
            gc.collect()
            times = {name: timers[name](ns[name]) for name in names[k:] + names[:k]}
            check = hook_checks(ns["off"])
            floor = span_floor(ns["off"])
            if r >= warmup:
                for name, seconds in times.items():
                    samples[name].append(seconds / ns[name] * 1e6)
                checks.append(check / ns["off"] * 1e6)
                floors.append(floor / ns["off"] * 1e6)
    finally:
        if gc_was_enabled:
            gc.enable()
    rewrite = [off - b for off, b in zip(samples["off"], samples["bare"], strict=True)]
    out: dict[str, Any] = {
        "backend": backend,
        "size": size,
        "body_bytes": len(body),
        "us": {name: spread(values).as_dict() for name, values in samples.items()},
        "rewrite_us": spread(rewrite).as_dict(),
        "added": {},
        "hook_checks_us": spread(checks).as_dict(),
        "sdk_span_us": spread(floors).as_dict(),
        "sdk_span_share": spread([f / w for f, w in zip(floors, rewrite, strict=True)]).as_dict(),
        "hook_checks_share": spread(
            [c / w for c, w in zip(checks, rewrite, strict=True)]
        ).as_dict(),
    }
    for name in STATES[1:]:
        added = [
            (s - off) / w for s, off, w in zip(samples[name], samples["off"], rewrite, strict=True)
        ]
        out["added"][name] = spread(added).as_dict()
    return out


def callgrind_child(state: str, size: str, n: int) -> None:
    if state == "sdk-span":
        tracer = PROVIDER.get_tracer("floor")
        for k in (20, n):
            for _ in range(k):
                one_span(tracer)
        return
    body = body_for(size, "prompt")
    app: Any = BareApp() if state == "bare" else make_middleware(BareApp())
    scope = http_scope(CHAT_PATH, len(body))
    if state != "bare":
        setters()[state]()

    async def main() -> None:
        for k in (20, n):  # warm-up, then what is counted
            for _ in range(k):
                await app(scope, OnceReceive(body), sink_send)

    anyio.run(main)


def callgrind(size: str, n: int, jobs: int) -> dict[str, float]:
    """Instructions per request for each state."""
    from concurrent.futures import ThreadPoolExecutor

    from callgrind import _COLLECTED

    def count(state: str, k: int) -> int:
        argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
        argv += [sys.executable, __file__, "--child", state, size, str(k)]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        out = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=1200, check=False
        )
        match = _COLLECTED.search(out.stderr)
        if out.returncode != 0 or match is None:
            raise RuntimeError(f"callgrind run failed ({state}):\n{out.stderr[-2000:]}")
        return int(match.group(1))

    states = ["bare", *STATES, "sdk-span"]
    with ThreadPoolExecutor(jobs) as pool:
        runs = {(s, k): pool.submit(count, s, k) for s in states for k in (0, n)}
    return {s: (runs[s, n].result() - runs[s, 0].result()) / n for s in states}


def report_callgrind(per_request: dict[str, float]) -> None:
    off = per_request["off"]
    rewrite = off - per_request["bare"]
    rows = [
        [
            state,
            f"{per_request[state]:,.0f}",
            "-"
            if state in ("bare", "off")
            else f"{(per_request[state] - off) / rewrite * 100:+.1f} %",
        ]
        for state in ("bare", *STATES)
    ]
    span = per_request["sdk-span"]
    rows.append(["one bare SDK span (for scale)", f"{span:,.0f}", f"{span / rewrite * 100:.1f} %"])
    ours = per_request["both"] - off - span
    rows.append(["both, less one bare SDK span", "", f"{ours / rewrite * 100:+.1f} %"])
    print("\n## Instructions per request (callgrind)\n")
    print(table(["state", "instructions", "added to the rewrite"], rows))


def report(results: list[dict[str, Any]]) -> None:
    rows = []
    for res in results:
        for name in ("bare", *STATES):
            us = res["us"][name]
            added = res["added"].get(name)
            rows.append(
                [
                    res["backend"],
                    name,
                    f"{us['median']:.2f}",
                    "-"
                    if added is None
                    else f"{added['median'] * 100:+.1f} % "
                    f"[{added['q1'] * 100:+.1f}–{added['q3'] * 100:+.1f}]",
                ]
            )
    print("\n## Per request, median over rounds (added: share of the rewrite's own cost)\n")
    print(table(["backend", "state", "µs", "added to the rewrite [IQR]"], rows))
    print("\n## Targets\n")
    rows = []
    for res in results:
        both = res["added"]["both"]
        rows.append(
            [
                res["backend"],
                "metrics + tracing (no-op exporter)",
                f"< {TARGET_ADDED * 100:.0f} %",
                f"{both['median'] * 100:.1f} %",
                "met" if both["median"] < TARGET_ADDED else "NOT met",
            ]
        )
        share = res["hook_checks_share"]
        rows.append(
            [
                res["backend"],
                f"not installed: 3 hook checks ({res['hook_checks_us']['median'] * 1000:.0f} ns)",
                "not measurable",
                f"{share['median'] * 100:.2f} %",
                "met" if share["median"] < 0.01 else "NOT met",
            ]
        )
    print(table(["backend", "what", "target", "measured", "verdict"], rows, right=3))
    print("\n## One bare SDK span, for scale (not ours: opentelemetry-sdk's own cost)\n")
    rows = [
        [
            res["backend"],
            f"{res['sdk_span_us']['median']:.2f}",
            f"{res['sdk_span_share']['median'] * 100:.1f} %",
        ]
        for res in results
    ]
    print(table(["backend", "µs per span", "share of the rewrite"], rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-ms", type=float, default=15.0)
    parser.add_argument("--backends", default="asyncio,trio")
    parser.add_argument("--size", default="typical")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--callgrind", action="store_true", help="count instructions instead")
    parser.add_argument("-n", type=int, default=300, help="requests per callgrind run")
    parser.add_argument("--jobs", type=int, default=2, help="valgrind processes at once")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        callgrind_child(args.child[0], args.child[1], int(args.child[2]))
        return 0
    if args.callgrind:
        info = machine_info()
        print_machine(info)
        print(f"# callgrind, {args.n} requests per run, body {args.size}, asyncio")
        per_request = callgrind(args.size, args.n, args.jobs)
        report_callgrind(per_request)
        write_json(args.json, {"machine": info, "args": vars(args), "instructions": per_request})
        return 0
    info = machine_info()
    print_machine(info)
    print(f"# {args.rounds} rounds (+{args.warmup}) per state, body {args.size}, thread_time")
    gc.collect()
    gc.freeze()
    results = []
    for backend in args.backends.split(","):
        results.append(run(backend, args.size, args.rounds, args.warmup, args.batch_ms / 1e3))
        print(f"  {backend} done", file=sys.stderr)
    report(results)
    write_json(args.json, {"machine": info, "args": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
