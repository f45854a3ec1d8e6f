"""Server processes for the benchmarks: a free port, pinning to a core, a clean stop."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterable

__all__ = ["free_port", "pinned", "stop"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(core: int | None, argv: list[str]) -> list[str]:
    """`argv` run on `core` (taskset), or as is when no core is given."""
    return argv if core is None else ["taskset", "-c", str(core), *argv]


def stop(processes: Iterable[subprocess.Popen[bytes] | None], grace: float = 10.0) -> None:
    """Terminate every process still running, then wait for each; kill one that outlives `grace`."""
    started = [p for p in processes if p is not None]
    for process in started:
        if process.poll() is None:
            process.terminate()
    for process in started:
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
