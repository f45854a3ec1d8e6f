"""Runs the gateway for `gateway.py`: `build_app` of a config file under uvicorn, one process.

    python benchmarks/_gateway_server.py CONFIG PORT [--http h11|httptools] [--loop asyncio|uvloop]
                                         [--transport auto|httpx|aiohttp]

What `prompt-middleware serve --config CONFIG` runs, with uvicorn's HTTP parser and event loop
chosen explicitly so that stacks can be compared (serve picks the fastest installed), and
`--transport` to force one of `UpstreamProxy`'s transports (a version without the option
ignores it). Works with any checkout of the library on PYTHONPATH, so that two versions can
be measured side by side.
"""

from __future__ import annotations

import argparse
import sys

import uvicorn

from prompt_middleware.gateway.app import build_app
from prompt_middleware.gateway.config import load_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("port", type=int)
    parser.add_argument("--http", default="auto")
    parser.add_argument("--loop", default="auto")
    parser.add_argument("--transport", default="auto")
    parser.add_argument("--gc", default="", help="experiment: freeze, or freeze,THRESHOLD")
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="uvicorn's access log at INFO (serve before #17's follow-up)",
    )
    parser.add_argument(
        "--our-log",
        action="store_true",
        help="logging as serve sets it up at INFO: the gateway's own access line per request",
    )
    args = parser.parse_args()
    if args.our_log:
        from prompt_middleware import observability

        observability.configure_logging("info", "text")
    config = load_config(args.config, {})
    try:
        app = build_app(config, own_process=True)
    except TypeError:  # a version before server.gc_threshold
        app = build_app(config)
    if args.gc:
        import gc

        gc.collect()
        gc.freeze()
        if "," in args.gc:
            gc.set_threshold(int(args.gc.split(",")[1]))
    if args.transport != "auto":
        for upstream in app.router.upstreams.values():
            if hasattr(upstream, "_transport_name"):
                upstream._transport_name = args.transport
            elif args.transport != "httpx":
                sys.exit(f"this version has no {args.transport} transport")
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        http=args.http,
        loop=args.loop,
        lifespan="on",
        access_log=args.access_log,
        log_level="info" if args.access_log or args.our_log else "warning",
        backlog=2048,
    )


if __name__ == "__main__":
    main()
