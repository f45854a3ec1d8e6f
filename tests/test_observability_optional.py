"""Without the extras (or before `enable()`), observability imports nothing and does nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BLOCKED = """
import sys

class Block:
    # As if the metrics and otel extras were not installed.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("prometheus_client", "opentelemetry"):
            raise ImportError(f"blocked: {name}")
        return None

sys.meta_path.insert(0, Block())
"""

NOT_ENABLED = """
import anyio, sys
import prompt_middleware
from prompt_middleware import observability
from prompt_middleware.core.prompts import Prompt
from prompt_middleware.middleware import PromptMiddleware
from prompt_middleware.registries.memory import InMemoryRegistry
from prompt_middleware.testing import CaptureApp, asgi_client

async def main() -> None:
    registry = InMemoryRegistry([Prompt("p", 1, "text", "hi", labels=("production",))])
    async with asgi_client(PromptMiddleware(CaptureApp(), registry)) as client:
        response = await client.post("/v1/chat/completions", json={"prompt_id": "p"})
        assert response.status_code == 200, response.text

anyio.run(main)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("prometheus_client", "opentelemetry"))
print(observability.active, loaded)
"""

ENABLE = """
from prompt_middleware import observability
observer = observability.enable()
print(observer.metrics, observer.tracing, observability.metrics_available(),
      observability.tracing_available())
for kwargs in ({"metrics": True}, {"tracing": True}):
    try:
        observability.enable(**kwargs)
    except RuntimeError as exc:
        print(exc)
"""


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_nothing_is_imported_until_enabled() -> None:
    # Installed here (dev extra), yet not imported by the package or a request.
    assert _run(NOT_ENABLED).strip() == "None []"


def test_without_the_extras() -> None:
    assert _run(BLOCKED + NOT_ENABLED).strip() == "None []"
    lines = _run(BLOCKED + ENABLE).splitlines()
    assert lines[0] == "None None False False"
    assert "pip install 'prompt-middleware[metrics]'" in lines[1]
    assert "pip install 'prompt-middleware[otel]'" in lines[2]
