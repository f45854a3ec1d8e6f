"""registries/tenants.py: per-request credentials resolved to one cache-aware registry."""

from __future__ import annotations

import json

import pytest

from prompt_middleware import CachedRegistry, LangfuseRegistry, PromptMiddleware
from prompt_middleware.core.errors import InvalidPromptRequest
from prompt_middleware.core.references import Credentials
from prompt_middleware.registries.tenants import LangfuseTenants

from .helpers import Recorder, SendLog, chunked_receive, http_scope

pytestmark = pytest.mark.anyio

# Nothing listens on port 9: a request that reached Langfuse would fail, not pass.
BASE = "http://127.0.0.1:9"
MALFORMED_HOSTS = [
    "http://[::1",
    "http://[evil]",
    "https://[lf.example.com]",
    "http://[::1]:99999",
    "http://127.0.0.1:9\ud800",
]


def base_registry() -> LangfuseRegistry:
    return LangfuseRegistry("pk-lf-base", "sk-lf-base", base_url=BASE, max_retries=0)


@pytest.mark.parametrize("host", MALFORMED_HOSTS)
def test_malformed_hosts_are_refused_as_the_clients_error(host: str) -> None:
    tenants = LangfuseTenants(base_registry())
    with pytest.raises(InvalidPromptRequest) as info:
        tenants.registry_for(Credentials("pk-lf-a", "sk-lf-a", host))
    assert info.value.param == "langfuse_host"


@pytest.mark.parametrize("host", MALFORMED_HOSTS)
async def test_malformed_hosts_through_the_middleware_are_a_400(host: str) -> None:
    app = Recorder()
    mw = PromptMiddleware(app, registry=base_registry(), allow_request_credentials=True)
    body = {
        "prompt_id": "greet",
        "langfuse_public_key": "pk-lf-a",
        "langfuse_secret_key": "sk-lf-a",
        "langfuse_host": host,
    }
    send = SendLog()
    await mw(http_scope(), chunked_receive([json.dumps(body).encode()]), send)
    assert send.status == 400
    error = json.loads(send.body)["error"]
    assert (error["code"], error["param"]) == ("invalid_prompt_request", "langfuse_host")
    assert app.calls == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("langfuse_public_key", "pk\ud800"),
        ("langfuse_secret_key", "sk\udfff"),
        ("langfuse_secret", "sk\ud800"),
        ("langfuse_host", "http://127.0.0.1:9/\ud800"),
    ],
)
async def test_unsendable_credentials_are_a_400_not_a_500(field: str, value: str) -> None:
    app = Recorder()
    mw = PromptMiddleware(app, registry=base_registry(), allow_request_credentials=True)
    body = {"prompt_id": "greet", "langfuse_public_key": "pk-lf-a", "langfuse_secret_key": "sk"}
    if field == "langfuse_secret":
        del body["langfuse_secret_key"]
    body[field] = value
    send = SendLog()
    await mw(http_scope(), chunked_receive([json.dumps(body).encode()]), send)
    assert send.status == 400
    error = json.loads(send.body)["error"]
    assert (error["code"], error["param"]) == ("invalid_prompt_request", field)
    assert value not in send.body.decode("utf-8", "surrogatepass")
    assert app.calls == []


def test_registry_for_is_cache_aware_and_pooled() -> None:
    base = base_registry()
    cache = CachedRegistry(base)
    tenants = LangfuseTenants(base, cache=cache)
    creds = Credentials("pk-lf-a", "sk-lf-a")
    first = tenants.registry_for(creds)
    assert tenants.registry_for(Credentials("pk-lf-a", "sk-lf-a")) is first
    assert tenants.registry_for(Credentials("pk-lf-a", "sk-lf-other")) is not first
    assert not isinstance(first, LangfuseRegistry)  # the cache's view of that tenant
    tenant, registry = tenants.resolve("pk-lf-a", "sk-lf-a")
    assert isinstance(registry, LangfuseRegistry)
    assert "sk-lf-a" not in repr(first) + repr(registry) + tenant
    uncached = LangfuseTenants(base)
    assert isinstance(uncached.registry_for(creds), LangfuseRegistry)
