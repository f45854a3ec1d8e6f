"""Real uvicorn servers on 127.0.0.1 for tests, each in a thread with its own event loop.

uvicorn is asyncio-only, so running it in a thread lets trio tests talk to it over TCP too.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from starlette.types import ASGIApp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(app: ASGIApp, *, lifespan: str = "on", **options: Any) -> Iterator[str]:
    """Serve `app` on a free loopback port; yields its base URL, stops it on exit.

    `options` go to `uvicorn.Config` (e.g. `backlog` for load tests).
    """
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=free_port(),
        lifespan=lifespan,  # type: ignore[arg-type]
        log_level="warning",
        **options,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(10)
