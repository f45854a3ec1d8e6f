"""Managed prompts for an existing OpenAI-compatible gateway: wrap its ASGI app, nothing else.

For a LiteLLM proxy the whole change is one line, in a module you then serve with uvicorn:

    from litellm.proxy.proxy_server import app as litellm_app
    app = PromptMiddleware(litellm_app, registry=FileRegistry("prompts"))

Here a small Starlette gateway stands in for it: it checks a gateway key and forwards `/v1/...` to
an upstream (`UPSTREAM_URL`, e.g. https://api.openai.com/v1, with `UPSTREAM_API_KEY`), or to the
built-in echo upstream when `UPSTREAM_URL` is unset.

Run (from the repository root):  uvicorn examples.wrap_gateway:app --port 4000
Then point any OpenAI client at http://127.0.0.1:4000/v1 with api_key="sk-gateway" and send
`extra_body={"prompt_id": "support/triage", "prompt_variables": {...}}`.

The middleware sits in front of the gateway, so it is given the gateway's key check as
`authorize=`: a request with a bad key is refused before its body is read or its prompt looked
up, and a client without a key learns nothing about which prompts exist.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from prompt_middleware import FileRegistry, PromptMiddleware, UpstreamProxy
from prompt_middleware.core.errors import InvalidApiKey
from prompt_middleware.gateway.echo import EchoUpstream

PROMPTS = Path(__file__).resolve().parent / "prompts"
GATEWAY_KEY = os.environ.get("GATEWAY_KEY", "sk-gateway")


def has_gateway_key(scope: Scope) -> bool:
    given = dict(scope["headers"]).get(b"authorization", b"")
    return hmac.compare_digest(given, f"Bearer {GATEWAY_KEY}".encode())


class RequireKey:
    """The gateway's own auth: `Authorization: Bearer <GATEWAY_KEY>` on every request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not has_gateway_key(scope):
            body = json.dumps(
                {
                    "error": {
                        "message": "Invalid gateway key.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                }
            ).encode()
            headers = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 401, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def build_gateway() -> Starlette:
    """The existing gateway: health check, key check, everything under /v1 forwarded."""
    upstream_url = os.environ.get("UPSTREAM_URL")
    upstream: UpstreamProxy | EchoUpstream
    if upstream_url:
        api_key = os.environ.get("UPSTREAM_API_KEY")
        # The upstream key stays on the server; the client's gateway key is replaced.
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        upstream = UpstreamProxy(upstream_url, headers=headers)
    else:
        upstream = EchoUpstream()

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        if isinstance(upstream, UpstreamProxy):
            await upstream.aclose()  # Mount does not pass lifespan on to the proxy

    return Starlette(
        routes=[Route("/health", health), Mount("/v1", app=RequireKey(upstream))],
        lifespan=lifespan,
    )


gateway = build_gateway()


async def check_key(scope: Scope) -> None:
    """The gateway's own key check, run by the middleware before it reads anything."""
    if not has_gateway_key(scope):
        raise InvalidApiKey("Invalid gateway key.")


# The one line this example is about.
app = PromptMiddleware(gateway, registry=FileRegistry(PROMPTS), authorize=check_key)
