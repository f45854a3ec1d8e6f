"""A gateway with metrics on, importable by `uvicorn --workers N` (each worker imports it).

`/metrics` serves every worker's series (PROMETHEUS_MULTIPROC_DIR is set by the test); the rest
goes through PromptMiddleware to the built-in echo upstream.
"""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from prompt_middleware import observability
from prompt_middleware.core.prompts import Prompt
from prompt_middleware.gateway.echo import EchoUpstream
from prompt_middleware.middleware import PromptMiddleware
from prompt_middleware.registries.memory import InMemoryRegistry

NAME = "support/triage"

observability.enable(metrics=True, tracing=False, access_log=False)
_metrics = observability.metrics_app()
_gateway = PromptMiddleware(
    EchoUpstream(), InMemoryRegistry([Prompt(NAME, 1, "text", "hi", labels=("production",))])
)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http" and scope["path"] == "/metrics":
        await _metrics(scope, receive, send)
    else:
        await _gateway(scope, receive, send)
