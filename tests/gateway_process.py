"""`prompt-middleware serve` as a real subprocess for the gateway tests, and a slow SSE upstream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
from starlette.types import Receive, Scope, Send

from prompt_middleware._asgi import answer_lifespan, read_body, send_json

from .servers import free_port

ROOT = Path(__file__).resolve().parent.parent
COMMAND = [sys.executable, "-m", "prompt_middleware"]
# Variables a developer's shell may hold that would change what the gateway does.
_SCRUBBED = (
    "UPSTREAM_API_KEY",
    "OPENAI_API_KEY",
    "LANGFUSE_PUBLIC_KEY",
    "LANGFUSE_SECRET_KEY",
    "LANGFUSE_HOST",
    "LANGFUSE_BASE_URL",
    "GATEWAY_KEY",
)


def gateway_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env.update(extra)
    return env


def run_cli(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the command to its end (for startup errors)."""
    return subprocess.run(
        [*COMMAND, *args],
        cwd=ROOT,
        env=dict(env) if env is not None else gateway_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@dataclass
class Gateway:
    url: str
    process: subprocess.Popen[str]
    # stderr (and stdout, with `serving(stdout=True)`), filled in once the process has ended
    log: list[str] = field(default_factory=list)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.returncode is not None:
            return self.process.returncode
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            output = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output = self.process.communicate()
        text = output[1] if output[1] is not None else output[0]
        if text and not self.log:
            self.log.extend(text.splitlines())
        return self.process.wait()


@contextmanager
def serving(
    *args: str,
    env: Mapping[str, str] | None = None,
    wait_for: str = "/health",
    stdout: bool = False,
) -> Iterator[Gateway]:
    """Run `serve ARGS --port P` until `wait_for` answers 200; stop it (SIGTERM) afterwards.

    `stdout=True` keeps stdout in the log too (uvicorn's access lines go there); the pipes are
    read only at the end, so keep such runs to a few requests.
    """
    port = free_port()
    process = subprocess.Popen(
        [*COMMAND, "serve", *args, "--port", str(port)],
        cwd=ROOT,
        env=dict(env) if env is not None else gateway_env(),
        stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if stdout else subprocess.PIPE,
        text=True,
    )
    gateway = Gateway(f"http://127.0.0.1:{port}", process)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                gateway.stop()
                raise AssertionError("serve exited early:\n" + "\n".join(gateway.log))
            assert time.monotonic() < deadline, "serve did not start"
            try:
                if httpx.get(gateway.url + wait_for, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        yield gateway
    finally:
        gateway.stop()


def worker_pids(gateway: Gateway) -> list[int]:
    """The worker processes of a gateway with `server.workers` > 1: the children uvicorn spawned
    (not multiprocessing's resource tracker, also a child)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (proc / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # not a process, or one that just ended
        if parent == gateway.process.pid and b"spawn_main" in command:
            found.append(int(proc.name))
    return sorted(found)


@contextmanager
def only_worker(gateway: Gateway, pid: int) -> Iterator[None]:
    """Every other worker stopped (SIGSTOP) for the block, so that `pid` accepts every new
    connection: the workers share one listening socket and the kernel picks among them.

    Keep the block short: uvicorn kills a worker that misses its health checks for 5 s.
    """
    others = [other for other in worker_pids(gateway) if other != pid]
    for other in others:
        os.kill(other, signal.SIGSTOP)
    try:
        yield
    finally:
        for other in others:
            os.kill(other, signal.SIGCONT)


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    """`config` as a JSON file (YAML tests write their own text)."""
    path.write_text(json.dumps(config))
    return path


def langfuse_gateway_config(
    langfuse_url: str,
    keys: tuple[str, str],
    preload: str,
    *,
    ttl: float = 600,
    redis_url: str | None = None,
    poll_interval: float | None = None,
    webhook: bool = True,
) -> dict[str, Any]:
    """A gateway on a (fake) Langfuse that preloads `preload`, echoing upstream; with Redis,
    polling and the signed webhook route (secret `LANGFUSE_WEBHOOK_SECRET`) as asked."""
    cache: dict[str, Any] = {"ttl": ttl}
    if redis_url is not None:
        cache["redis_url"] = redis_url
    if poll_interval is not None:
        cache["poll_interval"] = poll_interval
    config: dict[str, Any] = {
        "registry": {
            "langfuse": {"host": langfuse_url, "public_key": keys[0], "secret_key": keys[1]},
            "preload": [preload],
        },
        "cache": cache,
        "upstreams": {"echo": {"base_url": "echo"}},
        # stderr is read once the process ends: keep it to warnings, well inside a pipe's buffer.
        "server": {"log_level": "warning"},
    }
    if webhook:
        secrets = ["os.environ/LANGFUSE_WEBHOOK_SECRET"]
        config["webhooks"] = {"langfuse": {"path": "/webhooks/langfuse", "secrets": secrets}}
    return config


class SlowStream:
    """An upstream whose chat completions stream `chunks` SSE events `interval` seconds apart.

    `started` counts streams that began, so a test can act mid-stream.
    """

    def __init__(self, chunks: int = 10, interval: float = 0.1) -> None:
        self.chunks = chunks
        self.interval = interval
        self.started = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if await read_body(receive) is None:
            return
        if not scope["path"].endswith("/chat/completions"):
            await send_json(send, 404, {"error": {"message": "no", "type": "x", "code": "x"}})
            return
        self.started += 1
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for index in range(self.chunks):
            chunk = {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "m",
                "choices": [{"index": 0, "delta": {"content": f"{index} "}, "finish_reason": None}],
            }
            data = b"data: " + json.dumps(chunk).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": data, "more_body": True})
            await anyio.sleep(self.interval)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
