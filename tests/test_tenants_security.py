"""Tenants (per-request Langfuse credentials) under attack: no leaks, no steering, no cross-talk.

- Secrets (the client's `Authorization`, `langfuse_*` keys, the registry's own keys) appear in no
  log record at any level, no error body and no forwarded body, across every outcome.
- Per-request `langfuse_host` outside the allow-list is a 400 and nothing leaves the process
  (extends tests/test_tenants.py with the URL tricks).
- Hundreds of concurrent requests over tenants x prompts x variables: each gets its own.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
import httpx
import pytest
from starlette.types import Receive, Scope, Send

from prompt_middleware import (
    LangfuseRegistry,
    PromptMiddleware,
    UpstreamProxy,
)
from prompt_middleware.core.prompts import PromptRef
from prompt_middleware.core.references import Credentials, PromptRequest
from prompt_middleware.testing import CaptureApp, asgi_client

from .fake_langfuse import FakeLangfuse
from .helpers import openai_error
from .servers import running_server

pytestmark = pytest.mark.anyio

BASE_PK, BASE_SK = "pk-lf-base-0001", "sk-lf-BASE-SECRET-0001"
A_PK, A_SK = "pk-lf-tenant-a", "sk-lf-TENANT-A-SECRET"
B_PK, B_SK = "pk-lf-tenant-b", "sk-lf-TENANT-B-SECRET"
C_PK, C_SK = "pk-lf-tenant-c", "sk-lf-TENANT-C-SECRET"
WRONG_SK = "sk-lf-WRONG-GUESS-SECRET"
BEARER = "sk-proj-CLIENT-OPENAI-SECRET"
SECRETS = (BASE_SK, A_SK, B_SK, C_SK, WRONG_SK, BEARER)


@pytest.fixture
def fake(clean_fake: FakeLangfuse) -> FakeLangfuse:
    fake = clean_fake
    for pk, sk, who in ((BASE_PK, BASE_SK, "base"), (A_PK, A_SK, "A"), (B_PK, B_SK, "B")):
        for prompt in ("greet", "farewell", "triage"):
            fake.add_prompt(pk, sk, prompt, f"{who} {prompt} says hi to {{{{user}}}}")
    fake.add_prompt(C_PK, C_SK, "greet", "C greet says hi to {{user}}")
    return fake


class Upstream:
    """Records what reaches the model provider: headers and body."""

    def __init__(self) -> None:
        self.seen: list[tuple[dict[bytes, bytes], bytes]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.seen.append((dict(scope["headers"]), body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})


def creds(pk: str, sk: str, **extra: Any) -> dict[str, Any]:
    return {"langfuse_public_key": pk, "langfuse_secret_key": sk, **extra}


async def test_secrets_appear_in_no_log_error_or_forwarded_body(
    fake: FakeLangfuse, served: tuple[FakeLangfuse, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: ours, httpx, httpcore, uvicorn
    upstream = Upstream()
    host = creds(A_PK, A_SK, langfuse_host="http://10.0.0.1")
    # (body, status, error code): the client's own key is sent along every time.
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"prompt_id": "greet", "prompt_variables": {"user": "u"}}, 200, ""),
        ({"prompt_id": "greet", **creds(A_PK, A_SK)}, 200, ""),
        # Langfuse says 401.
        ({"prompt_id": "greet", **creds(A_PK, WRONG_SK)}, 502, "prompt_registry_auth_failed"),
        ({"prompt_id": "greet", **host}, 400, "invalid_prompt_request"),
        # Credentials, no prompt.
        ({"messages": [], **creds(A_PK, A_SK)}, 400, "invalid_prompt_request"),
        ({"prompt_id": "nope", **creds(A_PK, A_SK)}, 404, "prompt_not_found"),
        # Langfuse fails, then answers a malformed prompt.
        (
            {"prompt_id": "greet", "prompt_version": 1, **creds(B_PK, B_SK)},
            503,
            "prompt_registry_unavailable",
        ),
        ({"prompt_id": "greet", "prompt_version": 1, **creds(C_PK, C_SK)}, 502, "invalid_prompt"),
        ({"prompt_id": "greet", "langfuse_public_key": A_PK, "langfuse_secret": A_SK}, 200, ""),
        ({"model": "m", "messages": [{"role": "user", "content": "no prompt here"}]}, 200, ""),
    ]
    with running_server(upstream, lifespan="off") as upstream_url:
        async with UpstreamProxy(upstream_url) as proxy:
            registry = LangfuseRegistry(BASE_PK, BASE_SK, base_url=served[1], max_retries=0)
            mw = PromptMiddleware(proxy, registry=registry, allow_request_credentials=True)
            strict = PromptMiddleware(proxy, registry=registry)
            headers = {"authorization": f"Bearer {BEARER}"}
            responses: list[httpx.Response] = []
            async with asgi_client(mw) as client, asgi_client(strict) as strict_client:
                for body, status, code in cases:
                    if body.get("langfuse_public_key") == B_PK:
                        fake.fail_next(1, 500, body={"error": "Boom", "message": B_SK})
                    if body.get("langfuse_public_key") == C_PK:
                        fake.fail_next(1, 200, body={"name": "greet", "secret": C_SK})
                    response = await client.post("/v1/chat/completions", json=body, headers=headers)
                    if code:
                        openai_error(response, status, code)
                    else:
                        assert response.status_code == status, (body, response.text)
                    responses.append(response)
                responses.append(
                    await strict_client.post(
                        "/v1/chat/completions",
                        json={"prompt_id": "greet", **creds(A_PK, A_SK)},
                        headers=headers,
                    )
                )
                openai_error(responses[-1], 400, "request_credentials_disabled")
                # Shadowed by a repeat, the secret must not ride along either.
                shadowed = (
                    b'{"messages":[],"langfuse_secret_key":"' + A_SK.encode() + b'",'
                    b'"langfuse_secret_key":null}'
                )
                responses.append(
                    await client.post("/v1/chat/completions", content=shadowed, headers=headers)
                )
                openai_error(responses[-1], 400, "invalid_prompt_request")
            await mw.aclose()

    # The secrets were really used: Langfuse saw them, the upstream got the client's key.
    assert {r.public_key for r in fake.requests} >= {BASE_PK, A_PK, B_PK, C_PK}
    assert all(h[b"authorization"] == f"Bearer {BEARER}".encode() for h, _ in upstream.seen)
    assert len(upstream.seen) == 4
    logged = caplog.text + "".join(
        logging.Formatter().formatException(r.exc_info) for r in caplog.records if r.exc_info
    )
    assert "prompt_middleware" in logged  # the capture did see our records
    for secret in SECRETS:
        assert secret not in logged, secret
        for response in responses:
            assert secret not in response.text, secret
            assert secret not in str(response.headers), secret
        for _, sent in upstream.seen:
            assert secret.encode() not in sent, secret
    for _, sent in upstream.seen:
        assert not [key for key in json.loads(sent) if key.startswith(("langfuse_", "prompt_"))]


def test_credentials_are_kept_out_of_reprs() -> None:
    request = PromptRequest(PromptRef("greet"), {}, Credentials(A_PK, A_SK, "http://h"))
    assert A_SK not in repr(request)
    assert A_SK not in repr(LangfuseRegistry(A_PK, A_SK, base_url="http://h"))


# --- per-request hosts: the allow-list, and nothing leaves before it says yes ---------------------

BASE_URL = "https://lf.example.com"
ALLOWED = "https://eu.lf.example.com/langfuse"

REFUSED_HOSTS: list[Any] = [
    "http://169.254.169.254",
    "http://127.0.0.1",
    "http://localhost:3000",
    "http://lf.example.com",  # scheme differs
    "https://lf.example.com:8443",  # port differs
    "https://lf.example.com.evil.com",
    "https://lf.example.com@evil.com",
    "https://evil.com@lf.example.com",
    "https://user:pw@lf.example.com",
    "https://evil.com#@lf.example.com",
    "https://evil.com?@lf.example.com",
    "https://evil.com\\@lf.example.com",
    "https://lf.example.com/../evil",
    "https://lf.example.com?x=1",
    "https://eu.lf.example.com/other",
    "https://eu.lf.example.com/langfuse/../x",
    " https://lf.example.com",
    "https://lf.example.com\t",
    "https://lf.exa\x00mple.com",
    "https://lf.example.com%2f@evil.com",
    "file:///etc/passwd",
    "gopher://lf.example.com",
    "//lf.example.com",
    "lf.example.com",
    "https://",
    "https://[::1]",
    "https://0x7f000001",
    "https://ⓛf.example.com",
    "",
    42,
    ["https://lf.example.com"],
    {"host": "https://lf.example.com"},
]

ALLOWED_HOSTS = {
    "https://lf.example.com": BASE_URL,
    "https://LF.Example.COM:443/": BASE_URL,
    "https://eu.lf.example.com/langfuse": ALLOWED,
    "https://eu.lf.example.com:443/langfuse/": ALLOWED,
    "https://eu.lf.example.com": ALLOWED,  # a bare origin means its configured URL
}


@pytest.fixture
def outbound() -> tuple[list[httpx.Request], httpx.AsyncClient]:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(
            200, json={"name": "greet", "version": 1, "type": "text", "prompt": "hi", "labels": []}
        )

    return sent, httpx.AsyncClient(transport=httpx.MockTransport(handler))


@pytest.fixture
def guarded(
    outbound: tuple[list[httpx.Request], httpx.AsyncClient], capture: CaptureApp
) -> PromptMiddleware:
    """Request credentials allowed, for the configured URL and ALLOWED only; Langfuse is
    `outbound`, the app behind is `capture`."""
    registry = LangfuseRegistry(BASE_PK, BASE_SK, base_url=BASE_URL, client=outbound[1])
    return PromptMiddleware(
        capture,
        registry=registry,
        allow_request_credentials=True,
        allowed_langfuse_hosts=[ALLOWED],
    )


@pytest.mark.parametrize("host", REFUSED_HOSTS)
async def test_hosts_outside_the_allow_list_are_400_with_no_outbound_request(
    outbound: tuple[list[httpx.Request], httpx.AsyncClient],
    guarded: PromptMiddleware,
    capture: CaptureApp,
    host: Any,
) -> None:
    body = {"prompt_id": "greet", **creds(A_PK, A_SK, langfuse_host=host)}
    async with asgi_client(guarded) as http:
        response = await http.post("/v1/chat/completions", json=body)
    openai_error(response, 400, "invalid_prompt_request", param="langfuse_host")
    assert A_SK not in response.text
    assert outbound[0] == []
    assert capture.requests == []


@pytest.mark.parametrize(("host", "base"), list(ALLOWED_HOSTS.items()))
async def test_allowed_hosts_reach_only_the_configured_url(
    outbound: tuple[list[httpx.Request], httpx.AsyncClient],
    guarded: PromptMiddleware,
    host: str,
    base: str,
) -> None:
    body = {"prompt_id": "greet", **creds(A_PK, A_SK, langfuse_host=host)}
    async with asgi_client(guarded) as http:
        response = await http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert [str(r.url.copy_with(query=None)) for r in outbound[0]] == [
        base + "/api/public/v2/prompts/greet"
    ]


# --- tenants x prompts x variables, all at once --------------------------------------------------


async def test_no_cross_talk_between_concurrent_tenants_prompts_and_variables(
    fake: FakeLangfuse, served: tuple[FakeLangfuse, str], capture: CaptureApp
) -> None:
    fake.delay = 0.05  # every fetch overlaps with many requests
    tenants: dict[str | None, tuple[str, str] | None] = {
        "base": None,
        "A": (A_PK, A_SK),
        "B": (B_PK, B_SK),
    }
    prompts = ("greet", "farewell", "triage")
    registry = LangfuseRegistry(BASE_PK, BASE_SK, base_url=served[1], max_retries=0)
    mw = PromptMiddleware(capture, registry=registry, allow_request_credentials=True)
    statuses: list[int] = []

    async def one(i: int) -> None:
        who = list(tenants)[i % 3]
        prompt = prompts[(i // 3) % 3]
        body: dict[str, Any] = {
            "model": "m",
            "prompt_id": prompt,
            "prompt_variables": {"user": f"user-{i}"},
            "metadata": {"i": i, "who": who, "prompt": prompt},
        }
        keys = tenants[who]
        if keys is not None:
            body |= creds(*keys)
        response = await client.post("/v1/chat/completions", json=body)
        statuses.append(response.status_code)

    async with asgi_client(mw) as client, anyio.create_task_group() as tg:
        for i in range(360):
            tg.start_soon(one, i)
    await mw.aclose()

    assert statuses == [200] * 360
    assert len(capture.requests) == 360
    for call in capture.requests:
        sent = call.json
        meta = sent["metadata"]
        expected = f"{meta['who']} {meta['prompt']} says hi to user-{meta['i']}"
        assert sent["messages"] == [{"role": "user", "content": expected}]
        assert call.prompt.name == meta["prompt"]
    # One fetch per (tenant, prompt): concurrent misses were collapsed, keyed per tenant.
    assert fake.request_count == 9
