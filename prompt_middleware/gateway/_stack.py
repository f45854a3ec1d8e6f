"""What `prompt-middleware serve` runs on, for its startup line.

uvicorn picks its fast parts when they are installed (`--http auto`, `--loop auto`), as the
`server` extra does: httptools parses HTTP/1.1 in C instead of h11 in Python, uvloop runs the
event loop on libuv instead of asyncio's selector loop. `UpstreamProxy` picks its own httptools
client on asyncio when httptools is installed (else aiohttp, else httpx). Each costs nothing to
leave out; docs/performance.md says what each buys.
"""

from __future__ import annotations

import importlib.util
import sys

from ._transport import auto_name

__all__ = ["server_stack"]


def server_stack() -> str:
    """E.g. `uvicorn (httptools, uvloop), upstream client httptools`."""
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    # uvicorn's `loop="auto"` takes uvloop where it is installed, except on Windows and PyPy.
    fast_loop = sys.platform != "win32" and sys.implementation.name == "cpython"
    loop = "uvloop" if fast_loop and importlib.util.find_spec("uvloop") else "asyncio"
    client = auto_name(asyncio=True)  # uvicorn runs the gateway on asyncio
    return f"uvicorn ({http}, {loop}), upstream client {client}"
