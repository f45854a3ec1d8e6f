"""The middleware in front of a small echo app, driven in-process: shows what the app receives.

Run: python examples/quickstart.py
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from prompt_middleware import FileRegistry, PromptMiddleware

PROMPTS = Path(__file__).resolve().parent / "prompts"


async def echo(request: Request) -> JSONResponse:
    """Stands in for the LLM: answers with the request it received."""
    return JSONResponse({"received": await request.json()})


app = Starlette(routes=[Route("/v1/chat/completions", echo, methods=["POST"])])
app.add_middleware(PromptMiddleware, registry=FileRegistry(PROMPTS))


async def main() -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        request = {
            "model": "langfuse/gpt-4o-mini",
            "prompt_id": "support/triage",
            "prompt_variables": {"product": "Acme Cloud"},
            "messages": [{"role": "user", "content": "I was charged twice this month."}],
        }
        response = await client.post("/v1/chat/completions", json=request)
        print("client sent:\n" + json.dumps(request, indent=2))
        name, version = response.headers["x-prompt-name"], response.headers["x-prompt-version"]
        print(f"\nprompt: {name} v{version}")
        print("app behind received:\n" + json.dumps(response.json()["received"], indent=2))


if __name__ == "__main__":
    anyio.run(main)
