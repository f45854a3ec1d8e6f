"""A FastAPI app with its own chat endpoint; PromptMiddleware turns prompt ids into messages.

Run (from the repository root):  uvicorn examples.fastapi_app:app --port 8000
Then:

    curl -s localhost:8000/v1/chat/completions -H 'content-type: application/json' -d '{
      "model": "gpt-4o-mini",
      "prompt_id": "support/triage",
      "prompt_variables": {"product": "Acme Cloud"},
      "messages": [{"role": "user", "content": "I was charged twice this month."}]}'

With OPENAI_API_KEY set, the endpoint calls OpenAI (or OPENAI_BASE_URL). Without it, it is a dry
run: the built-in echo upstream answers with the exact request the model would have received.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from openai import AsyncOpenAI

from prompt_middleware import FileRegistry, PromptMiddleware
from prompt_middleware.gateway.echo import EchoUpstream
from prompt_middleware.testing import openai_client

PROMPTS = Path(__file__).resolve().parent / "prompts"
logger = logging.getLogger("examples.fastapi_app")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    if os.environ.get("OPENAI_API_KEY"):
        async with AsyncOpenAI() as llm:
            app.state.llm = llm
            yield
    else:
        async with openai_client(EchoUpstream()) as llm:
            app.state.llm = llm
            yield


app = FastAPI(lifespan=lifespan)
app.add_middleware(PromptMiddleware, registry=FileRegistry(PROMPTS))


@app.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    # By now the prompt fields are gone and `messages` holds the compiled prompt.
    params: dict[str, Any] = await request.json()
    prompt = getattr(request.state, "prompt", None)  # the Prompt used, if any: tag your traces
    if prompt is not None:
        logger.info("prompt %s version %s", prompt.name, prompt.version)

    llm: AsyncOpenAI = request.app.state.llm
    model, messages = params.pop("model"), params.pop("messages")
    if not params.pop("stream", False):
        completion = await llm.chat.completions.create(
            model=model, messages=messages, extra_body=params
        )
        return JSONResponse(completion.model_dump(mode="json", exclude_unset=True))

    stream = await llm.chat.completions.create(
        model=model, messages=messages, stream=True, extra_body=params
    )

    async def events() -> AsyncIterator[str]:
        async with stream:
            async for chunk in stream:
                yield f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
