"""A real `redis-server` on a free loopback port, for the tests that need one.

Import a fixture into a test module (`from .redis_fixture import redis_server`): `redis_server`
is one server per test, `module_redis_server` one per test module (for modules that start
gateway processes once). The server keeps nothing on disk. `RedisServer.stop()` / `.start()`
take it away and bring it back on the same port, for outage tests. Tests are skipped if
`redis-server` is not installed (`scripts/test` installs it).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from .servers import free_port

__all__ = ["RedisServer", "module_redis_server", "redis_server"]


class RedisServer:
    """One `redis-server` process this test owns."""

    def __init__(self, executable: str, port: int) -> None:
        self.executable = executable
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        assert not self.running
        self._process = subprocess.Popen(
            [
                self.executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing is answered."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Kill the server at once (no shutdown handshake, as a crash would)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a paused one too
            process.kill()
            process.wait(10)


def _serving() -> Iterator[RedisServer]:
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip("redis-server is not installed (scripts/test installs it)")
    server = RedisServer(executable, free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    yield from _serving()


@pytest.fixture(scope="module")
def module_redis_server() -> Iterator[RedisServer]:
    """One server for the whole module; a test that stops it must start it again."""
    yield from _serving()
