from __future__ import annotations

from collections.abc import Iterator

import pytest

from prompt_middleware.testing import CaptureApp

from .fake_langfuse import FakeLangfuse, running_fake


# Explicit, so a missing trio fails loudly instead of silently dropping half the runs.
@pytest.fixture(params=["asyncio", "trio"], scope="session")
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["httpx", "aiohttp", "httptools"])
def transport(request: pytest.FixtureRequest, anyio_backend: str) -> str:
    """`UpstreamProxy(transport=...)` for a proxy run in the test's own event loop: every
    client on asyncio; aiohttp and httptools run on asyncio only, so trio has the httpx one."""
    if request.param != "httpx" and anyio_backend != "asyncio":
        pytest.skip(f"{request.param} runs on asyncio only")
    return str(request.param)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[FakeLangfuse, str]]:
    """A fake Langfuse on a real loopback server, shared by one test module: (fake, base URL)."""
    fake = FakeLangfuse()
    with running_fake(fake) as url:
        yield fake, url


@pytest.fixture
def clean_fake(served: tuple[FakeLangfuse, str]) -> Iterator[FakeLangfuse]:
    """The module's fake Langfuse, emptied for this test; slow answers end when it is over."""
    served[0].reset()
    yield served[0]
    served[0].release()


@pytest.fixture
def capture() -> CaptureApp:
    """The app behind the middleware: records each request (`requests`, `last`), answers
    `{"ok": true}`. Drive it with `prompt_middleware.testing.asgi_client`/`openai_client`, or
    raw ASGI with `tests.helpers.asgi_call`."""
    return CaptureApp({"ok": True})
