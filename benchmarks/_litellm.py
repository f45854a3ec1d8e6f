"""LiteLLM's proxy as a target of `gateway.py --litellm`: the same prompt requests, through it.

LiteLLM (`litellm[proxy]==1.108.7`, `langfuse>=4.7,<5`: newer releases need packages the
registry here lacks) is installed on demand into a venv of its own, `.bench-venv-litellm/`
(gitignored), made by this Python's base interpreter. Its proxy runs as one uvicorn process
(`--num_workers 1`) with a config whose model `langfuse/support` (the model the request bodies
name) is `langfuse/openai/gpt-4o-mini` at the fast upstream: the `langfuse/` prefix makes LiteLLM
fetch the request's `prompt_id` from Langfuse (its 60 s prompt cache, as ours), compile it with
`prompt_variables`, put it before the request's messages and apply the prompt's config (model,
temperature, max_tokens), before it calls the upstream. Requests authenticate with the master
key (`Bearer sk-benchmark`, what wrk sends; 1.108.7 refuses to start without one), and the
request's `x-` headers are passed on (`forward_client_headers_to_llm_api`) so that `x-chunks`
reaches the upstream for the SSE runs, as it does through the gateway.

Langfuse is `FakeLangfuse` here, a stdlib server in a thread of the benchmark's process. It
serves the prompt without the gateway prompt's `history` placeholder: LiteLLM appends the
request's messages after the template itself and would send an unresolved placeholder on as a
message. So the upstream gets what the gateway sends it: the system message compiled, then the
conversation. `check` proves it once per run against a recording upstream (a second model that
is only used there). Nothing leaves 127.0.0.1: the model cost map is the packaged one
(`LITELLM_LOCAL_MODEL_COST_MAP=True`), there is no database and there are no callbacks.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import subprocess
import sys
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

from _fake_langfuse import langfuse_body
from _workload import CHAT_PATH, PROMPT_NAME, make_prompt

__all__ = [
    "LITELLM",
    "FakeLangfuse",
    "RecordingUpstream",
    "argv",
    "check",
    "ensure_venv",
    "environment",
    "serving",
    "write_config",
]

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".bench-venv-litellm"
REQUIREMENTS = ("litellm[proxy]==1.108.7", "langfuse>=4.7,<5")
LITELLM = "LiteLLM proxy"
MODEL = "langfuse/support"
CHECK_MODEL = "langfuse/support-check"
PROMPTS_PATH = "/api/public/v2/prompts/"
PUBLIC_KEY, SECRET_KEY = "pk-lf-bench", "sk-lf-bench"
_CHECK_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-check",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "checked"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()


def _python() -> Path:
    return VENV / "bin" / "python"


def _installed() -> bool:
    probe = "import importlib.metadata as m; print(m.version('litellm'), m.version('langfuse'))"
    try:
        out = subprocess.run(
            [str(_python()), "-c", probe], check=True, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return out.stdout.split()[:1] == ["1.108.7"]


def ensure_venv() -> Path | None:
    """The venv's Python with LiteLLM installed (installing it if need be), or None (and why, on
    stderr) when that fails: LiteLLM is optional, the rest of the benchmark runs without it."""
    if _installed():
        return _python()
    print(f"installing {' '.join(REQUIREMENTS)} into {VENV}", file=sys.stderr)
    base = getattr(sys, "_base_executable", None) or sys.executable
    steps = (
        [base, "-m", "venv", str(VENV)],
        [str(_python()), "-m", "pip", "install", "-q", *REQUIREMENTS],
    )
    for step in steps:
        try:
            out = subprocess.run(step, check=False, capture_output=True, text=True, timeout=1200)
        except (OSError, subprocess.SubprocessError) as error:
            print(f"LiteLLM skipped: {' '.join(step)}: {error}", file=sys.stderr)
            return None
        if out.returncode != 0:
            tail = "\n".join((out.stdout + out.stderr).splitlines()[-15:])
            print(f"LiteLLM skipped: {' '.join(step)} failed:\n{tail}", file=sys.stderr)
            return None
    if not _installed():
        print("LiteLLM skipped: installed, but litellm 1.108.7 is not importable", file=sys.stderr)
        return None
    return _python()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: ClassVar[Any]

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FakeLangfuse:
    """`GET /api/public/v2/prompts/{name}` for the benchmark's prompt; counts every request by
    method and path (anything but that prompt is a 404, so LiteLLM sending traces would show)."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()

    def prompt_fetches(self) -> int:
        with self._lock:
            return self.requests[f"GET {PROMPTS_PATH}{PROMPT_NAME}"]

    def seen(self) -> dict[str, int]:
        with self._lock:
            return dict(self.requests)

    @staticmethod
    def body() -> bytes:
        return langfuse_body(PROMPT_NAME, placeholders=False)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(_Handler):
            def _any(self) -> None:
                if self.command != "GET":
                    self._body()
                path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
                with owner._lock:
                    owner.requests[f"{self.command} {path}"] += 1
                if self.command == "GET" and path == PROMPTS_PATH + PROMPT_NAME:
                    self._answer(200, owner.body())
                else:
                    self._answer(404, b'{"error":"NotFoundError","message":"not found"}')

            do_GET = do_POST = do_PUT = _any

        return Handler


class RecordingUpstream:
    """An OpenAI chat completions endpoint that keeps every request body it gets."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(_Handler):
            def do_POST(self) -> None:
                owner.bodies.append(json.loads(self._body()))
                self._answer(200, _CHECK_COMPLETION)

        return Handler


@contextlib.contextmanager
def serving(app: FakeLangfuse | RecordingUpstream) -> Iterator[str]:
    """`app` on a free loopback port, in a thread; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), app.handler())
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="bench-fake", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def write_config(path: Path, upstream: str, check_upstream: str, langfuse: str) -> Path:
    """LiteLLM's config (JSON is YAML): the benchmark's model and the check's, both with
    Langfuse prompt management."""

    def deployment(name: str, base: str) -> dict[str, Any]:
        return {
            "model_name": name,
            "litellm_params": {
                "model": "langfuse/openai/gpt-4o-mini",
                "api_base": f"{base}/v1",
                "api_key": "sk-upstream",
                "langfuse_public_key": PUBLIC_KEY,
                "langfuse_secret_key": SECRET_KEY,
                "langfuse_host": langfuse,
            },
        }

    config = {
        "model_list": [deployment(MODEL, upstream), deployment(CHECK_MODEL, check_upstream)],
        "litellm_settings": {"telemetry": False},
        "general_settings": {
            "master_key": "sk-benchmark",
            "forward_client_headers_to_llm_api": True,
        },
    }
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


def argv(python: Path, config: Path, port: int) -> list[str]:
    """LiteLLM's own CLI (`litellm --config ...`), one uvicorn worker, in this very process."""
    return [
        str(python),
        "-m",
        "litellm.proxy.proxy_cli",
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]


def environment(langfuse: str) -> dict[str, str]:
    return {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
        "LITELLM_LOG": "ERROR",
        "LANGFUSE_HOST": langfuse,
        "LANGFUSE_PUBLIC_KEY": PUBLIC_KEY,
        "LANGFUSE_SECRET_KEY": SECRET_KEY,
        "OTEL_SDK_DISABLED": "true",
        "NO_PROXY": "127.0.0.1,localhost",
        "PYTHONPATH": "",
        "VIRTUAL_ENV": str(VENV),
    }


def _post(port: int, body: bytes, chunks: int = 20) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(
            "POST",
            CHAT_PATH,
            body,
            {
                "content-type": "application/json",
                "authorization": "Bearer sk-benchmark",
                "x-chunks": str(chunks),
            },
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def check(
    port: int, body: bytes, stream_body: bytes, langfuse: FakeLangfuse, recorder: RecordingUpstream
) -> dict[str, Any]:
    """One request through LiteLLM to the recording upstream: LiteLLM fetched the prompt from
    Langfuse and sent what the gateway sends (the prompt's system message compiled with the
    request's variables, then the request's messages, the prompt's temperature and max_tokens).
    Then one to the benchmark's upstream, and a stream of 5 events from it (LiteLLM adds a last
    one with `finish_reason`). RuntimeError if not; else what was seen."""
    request = json.loads(body)
    status, data = _post(port, body.replace(MODEL.encode(), CHECK_MODEL.encode(), 1))
    if status != 200 or not recorder.bodies:
        raise RuntimeError(f"{LITELLM}: check status {status}: {data[:500]!r}")
    sent = recorder.bodies[-1]
    system = make_prompt().prompt[0]
    assert not isinstance(system, str)
    text = str(system["content"])
    for name, value in request["prompt_variables"].items():
        text = text.replace("{{" + name + "}}", value)
    want = [{"role": "system", "content": text}, *request["messages"]]
    got = [{k: m.get(k) for k in ("role", "content")} for m in sent["messages"]]
    if got != want or sent.get("temperature") != 0.2 or sent.get("max_tokens") != 400:
        raise RuntimeError(f"{LITELLM}: upstream got {json.dumps(sent)[:800]}")
    if langfuse.prompt_fetches() < 1:
        raise RuntimeError(f"{LITELLM}: no prompt fetched from Langfuse: {langfuse.seen()}")
    status, data = _post(port, body)
    if status != 200 or b"Your order ships tomorrow." not in data:
        raise RuntimeError(f"{LITELLM}: status {status}: {data[:500]!r}")
    status, data = _post(port, stream_body, chunks=5)
    if status != 200 or data.count(b"data: ") != 7 or not data.endswith(b"data: [DONE]\n\n"):
        raise RuntimeError(f"{LITELLM}: stream status {status}: {data[:500]!r}")
    return {
        "upstream_model": sent.get("model"),
        "upstream_messages": len(sent["messages"]),
        "upstream_keys": sorted(sent),
        "langfuse": langfuse.seen(),
    }
