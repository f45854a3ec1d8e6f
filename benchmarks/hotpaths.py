"""Where the time of a matching request goes: cProfile, then a timed breakdown by step.

    .venv/bin/python benchmarks/hotpaths.py [--size typical] [--cases c-parse,d] [--top 15]

1. cProfile over a few thousand requests of each case (asyncio): the functions with the most
   own time. cProfile's per-call overhead inflates small functions; read it for the ranking.
2. The steps of the rewrite timed one by one (thread_time, GC off, median of 15 rounds), calling
   the library's internal functions the way the middleware does. A step whose function has been
   renamed or removed is skipped with a note; these are internals, not API.

Needs nothing beyond the test environment (orjson is a dependency of the library since the
hot-path work of issue #6). Steps that older versions lack show as "renamed/removed".
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import statistics
import time
from collections.abc import Callable
from typing import Any

import anyio
import orjson
from _report import machine_info, print_machine, table
from _workload import (
    CHAT_PATH,
    SIZES,
    BareApp,
    OnceReceive,
    body_for,
    floor_once,
    http_scope,
    make_middleware,
    make_prompt,
    sink_send,
)

SHAPES = {"c": "plain", "c-parse": "plain_word", "d": "prompt"}


def profile(case: str, size: str, n: int, top: int) -> str:
    body = body_for(size, SHAPES[case])
    middleware = make_middleware(BareApp())
    scope = http_scope(CHAT_PATH, len(body))

    async def batch(k: int) -> None:
        for _ in range(k):
            await middleware(scope, OnceReceive(body), sink_send)

    anyio.run(batch, 50)
    profiler = cProfile.Profile()
    gc.disable()
    profiler.enable()
    anyio.run(batch, n)
    profiler.disable()
    gc.enable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    lines = out.getvalue().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
    return "\n".join(lines[start : start + top + 1])


def timed(fn: Callable[[], Any], n: int = 2000, rounds: int = 15) -> float:
    values = []
    for _ in range(rounds):
        start = time.thread_time()
        for _ in range(n):
            fn()
        values.append((time.thread_time() - start) / n * 1e6)
    return statistics.median(values)


def breakdown(size: str) -> list[list[str]]:
    """The steps of case d (and the floor), timed separately; internals looked up by name."""
    from types import SimpleNamespace

    from prompt_middleware import middleware as m
    from prompt_middleware.core import _json, references, rewrite

    r = SimpleNamespace(**{**vars(_json), **vars(references), **vars(rewrite)})

    body = body_for(size, "prompt")
    mw = make_middleware(BareApp())
    scope = http_scope(CHAT_PATH, len(body))
    headers = list(scope["headers"])
    prompt = make_prompt()
    n = 20 if size == "large" else 2000
    steps: list[tuple[str, Callable[[], Any] | None]] = []

    def get(module: Any, name: str) -> Any:
        return getattr(module, name, None)

    parse = get(r, "parse_json_object")
    find = get(r, "find_prompt_request")
    data = parse(body) if parse else json.loads(body)
    read = get(r, "read_prompt_request")
    request = read(data, {}, allow_credentials=False) if read else None
    cache = getattr(mw, "_cache", None)

    def cache_hit() -> Any:
        coro = cache.get_prompt(prompt.name)  # type: ignore[union-attr]
        try:
            coro.send(None)
        except StopIteration as stop:
            return stop.value
        raise RuntimeError("the cache hit suspended")

    if cache is not None:
        anyio.run(lambda: cache.get_prompt(prompt.name))
    build_messages = get(r, "build_messages")
    build = get(r, "build_chat_body")
    dump = get(r, "dump_json")
    new_body = build(data, request, prompt, mw.options) if build and request else body
    out_obj = json.loads(new_body)
    try:
        from prompt_middleware.core import encoding

        coding = get(encoding, "content_coding")
    except ImportError:
        coding = None
    with_headers = get(m, "_with_prompt_headers")
    markers = getattr(mw, "_markers", None)
    plain = body_for(size, "plain")

    def scan(data: bytes) -> Callable[[], Any]:
        # Byte strings before issue #6, compiled patterns since.
        if markers and isinstance(markers[0], bytes):
            return lambda: any(m in data for m in markers)
        return lambda: any(m.search(data) for m in markers)  # type: ignore[union-attr]

    strip = get(r, "_without_prompt_fields")
    apply_config = get(r, "_apply_model_and_config")

    steps = [
        ("pre-filter on this body (finds a marker)", scan(body) if markers else None),
        ("pre-filter on the c body (finds none)", scan(plain) if markers else None),
        (
            "find_prompt_request (parse + read)",
            (lambda: find(body, {}, allow_credentials=False)) if find else None,
        ),
        ("parse_json_object", (lambda: parse(body)) if parse else None),
        ("  for scale: bare orjson.loads(body)", lambda: orjson.loads(body)),
        ("  for scale: bare json.loads(body)", lambda: json.loads(body)),
        (
            "read_prompt_request",
            (lambda: read(data, {}, allow_credentials=False)) if read else None,
        ),
        ("CachedRegistry.get_prompt, fresh hit", cache_hit if cache is not None else None),
        (
            "build_messages (compile + merge)",
            (lambda: build_messages(prompt, request, data["messages"], mw.options))
            if build_messages and request
            else None,
        ),
        ("_without_prompt_fields", (lambda: strip(data)) if strip else None),
        (
            "_apply_model_and_config",
            (lambda: apply_config(dict(data), prompt, None, "chat")) if apply_config else None,
        ),
        ("dump_json", (lambda: dump(out_obj)) if dump else None),
        (
            "build_chat_body (the 4 above)",
            (lambda: build(data, request, prompt, mw.options)) if build and request else None,
        ),
        ("content_coding (header scan)", (lambda: coding(headers)) if coding else None),
        (
            "rebuild headers for the app",
            lambda: [
                *(
                    h
                    for h in headers
                    if h[0].lower() not in (b"content-length", b"transfer-encoding")
                ),
                (b"content-length", str(len(new_body)).encode("ascii")),
            ],
        ),
        (
            "_with_prompt_headers (quote name)",
            (lambda: with_headers(sink_send, prompt, "production")) if with_headers else None,
        ),
        ("floor: json.loads + json.dumps of the body", lambda: floor_once(body)),
    ]
    rows = []
    gc.disable()
    try:
        for label, fn in steps:
            rows.append([label, "renamed/removed" if fn is None else f"{timed(fn, n):.2f}"])
    finally:
        gc.enable()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="typical", choices=SIZES)
    parser.add_argument("--cases", default="c,c-parse,d")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("-n", type=int, default=5000, help="requests profiled per case")
    args = parser.parse_args(argv)
    print_machine(machine_info())
    n = max(50, args.n // 40) if args.size == "large" else args.n
    for case in args.cases.split(","):
        print(f"\n## cProfile: case {case}, {args.size} body, {n} requests, by own time\n")
        print("```")
        print(profile(case, args.size, n, args.top))
        print("```")
    print(f"\n## Steps of case d timed one by one ({args.size} body), µs per call\n")
    print(table(["step", "µs"], breakdown(args.size), right=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
