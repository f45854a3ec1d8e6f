"""The README's and the docs' examples, run as written against real servers; their links resolve.

`mkdocs build --strict` (in `.ci/run`) checks the links between docs pages; the README and the
gateway guide are not part of the site, so their links are checked here.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from .servers import free_port, running_server

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
MIGRATION = (ROOT / "docs" / "openai-migration.md").read_text(encoding="utf-8")
# A fenced block, indented or not (blocks inside list items are indented); the language and body.
FENCE = re.compile(r"^( *)```(\w+)\n(.*?)^\1```", flags=re.M | re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def blocks(text: str, language: str) -> list[str]:
    return [textwrap.dedent(body) for _, lang, body in FENCE.findall(text) if lang == language]


def block_with(text: str, language: str, marker: str) -> str:
    (found,) = [b for b in blocks(text, language) if marker in b]
    return found


def pointed_at(code: str, documented_url: str, url: str) -> str:
    assert documented_url in code, f"the example no longer uses {documented_url}"
    return code.replace(documented_url, url)


@contextmanager
def cli_gateway(*args: str) -> Iterator[str]:
    """`prompt-middleware serve ...` as a subprocess on a free port, until it answers."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "UPSTREAM_API_KEY"}
    process = subprocess.Popen(
        [sys.executable, "-m", "prompt_middleware", "serve", *args, "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, "serve exited early"
            assert time.monotonic() < deadline, "serve did not start"
            try:
                httpx.get(url + "/health", timeout=0.5)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize("page", ["README.md", "examples/standalone.md"])
def test_links_outside_the_site_point_at_files(page: str) -> None:
    path = ROOT / page
    links = LINK.findall(path.read_text(encoding="utf-8"))
    targets = [t.split("#")[0] for t in links if "://" not in t]
    assert targets
    missing = [t for t in targets if not (path.parent / t).exists()]
    assert not missing


@pytest.mark.parametrize(
    "page", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
)
def test_python_examples_compile(page: str) -> None:
    for code in blocks((ROOT / page).read_text(encoding="utf-8"), "python"):
        compile(code, page, "exec")


def test_readme_fastapi_app_and_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """The FastAPI app and the client from "Thirty seconds with FastAPI", under uvicorn."""
    received: list[dict[str, Any]] = []

    async def call_your_llm(request: dict[str, Any]) -> dict[str, Any]:
        received.append(request)
        message = {"role": "assistant", "content": "billing"}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0,
                "model": request["model"], "choices": [choice]}  # fmt: skip

    server_code = block_with(README, "python", "app.add_middleware(PromptMiddleware")
    client_code = block_with(README, "python", "client = OpenAI(")
    monkeypatch.chdir(ROOT / "examples")  # FileRegistry("prompts/") is examples/prompts
    monkeypatch.setenv("OPENAI_API_KEY", "sk-unused")
    server: dict[str, Any] = {"call_your_llm": call_your_llm}
    exec(server_code, server)
    with running_server(server["app"]) as url:
        client: dict[str, Any] = {}
        exec(pointed_at(client_code, "http://localhost:8000/v1", url + "/v1"), client)
        client["client"].close()

    (sent,) = received
    assert sent["model"] == "gpt-4o-mini"
    assert sent["messages"] == [
        {
            "role": "system",
            "content": "You triage support tickets for Acme. "
            "Answer with one of: bug, billing, question.",
        },
        {"role": "user", "content": "I was charged twice."},
    ]
    assert sent["temperature"] == 0
    assert "prompt_id" not in sent


def test_migration_before_and_after_through_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/openai-migration.md: the call as written, through `prompt-middleware serve`, sends on
    exactly the body the page shows, from the prompt file the page shows."""
    prompt_file, forwarded = (json.loads(b) for b in blocks(MIGRATION, "json"))
    shipped = json.loads((ROOT / "examples/prompts/pmpt_abc123.json").read_text(encoding="utf-8"))
    assert all(version in shipped for version in prompt_file)

    code = block_with(MIGRATION, "python", "client.responses.create(")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-unused")  # for the "before" client
    with cli_gateway("--upstream", "echo", "--prompts", "examples/prompts") as url:
        namespace: dict[str, Any] = {}
        exec(pointed_at(code, "http://localhost:4000/v1", url + "/v1"), namespace)
        namespace["client"].close()
    assert json.loads(namespace["response"].output_text) == forwarded
