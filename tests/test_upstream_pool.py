"""UpstreamProxy's connection pool survives a burst of cancelled requests (issue #16, item 1).

A slow upstream, more concurrent requests than the pool has connections, and every client
hanging up while its request waits: each hang-up cancels the proxy's send from outside (the
disconnect watcher). httpcore loses the pool slot of a request cancelled after it was handed a
new connection but before it used it (encode/httpcore#1093, #830); enough of them and every
later request waits for the pool timeout and gets a 503, against an upstream that has long been
fast again. After the burst, requests must succeed at once, with either client, on both
backends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Literal

import anyio
import anyio.lowlevel
import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from prompt_middleware import UpstreamProxy
from prompt_middleware._asgi import read_body
from prompt_middleware.gateway._transport import AsyncioSlots, TransportName

from .helpers import SendLog, http_scope
from .servers import running_server

pytestmark = [
    pytest.mark.anyio,
    # A send cancelled while httpcore writes the request leaves httpx's request-body generator
    # unexhausted; trio reports it when it is collected. httpx's, and harmless.
    pytest.mark.filterwarnings(
        r"ignore:Async generator 'httpx\._content\.ByteStream\.__aiter__':ResourceWarning"
    ),
    pytest.mark.filterwarnings(
        r"ignore:Exception ignored in. <async_generator object ByteStream\.__aiter__"
        r":pytest.PytestUnraisableExceptionWarning"
    ),
]

CLIENTS = 200
POOL = 10
BURSTS = 8


class SlowThenFast:
    """Answers `{}` after `delay` seconds (while a test is slow), at once once `delay` is 0."""

    def __init__(self) -> None:
        self.delay = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        if await read_body(receive) is None:
            return
        await anyio.sleep(self.delay)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[SlowThenFast, str]]:
    app = SlowThenFast()
    with running_server(app, lifespan="off", backlog=2048) as url:
        yield app, url


async def _hang_up_after(proxy: UpstreamProxy, delay: float) -> None:
    """One client: sends its body, then disconnects after `delay` seconds."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await anyio.sleep(delay)
        return {"type": "http.disconnect"}

    await proxy(http_scope("/v1/chat/completions"), receive, SendLog())


async def _status(proxy: UpstreamProxy) -> int:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    log = SendLog()
    await proxy(http_scope("/v1/chat/completions"), receive, log)
    return log.status


async def test_pool_recovers_after_bursts_of_cancelled_sends(
    upstream: tuple[SlowThenFast, str], transport: TransportName
) -> None:
    app, url = upstream
    limits = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
    async with UpstreamProxy(url, limits=limits, transport=transport) as proxy:
        # How many slots one burst loses varies from run to run (none to all); slots lost stay
        # lost, so a few bursts in a row lose them all on a pool that leaks.
        for burst in range(BURSTS):
            app.delay = 0.6
            try:
                with anyio.fail_after(10):
                    async with anyio.create_task_group() as tg:
                        for i in range(CLIENTS):
                            # Hang-ups spread over 0.3 s, while slots free up and are reassigned.
                            delay = 0.02 + (i % 10) * 0.03 + burst * 0.01
                            tg.start_soon(_hang_up_after, proxy, delay)
            finally:
                app.delay = 0.0
            # The upstream is fast again: requests get through at once, one by one and all
            # together; none waits for the 5 s pool timeout (bounds with room for a busy CI).
            for _ in range(POOL):
                with anyio.fail_after(2):
                    assert await _status(proxy) == 200
            with anyio.fail_after(3):
                async with anyio.create_task_group() as tg:
                    for _ in range(2 * POOL):
                        tg.start_soon(_expect_ok, proxy)


async def _expect_ok(proxy: UpstreamProxy) -> None:
    assert await _status(proxy) == 200


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_cancellation_as_a_slot_frees_up_goes_through_and_leaves_the_slot_free(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The asyncio clients' own pool slots: a request waiting for a slot is cancelled in the
    moment it gets one (cannot be timed from outside: the semaphore's `acquire` is wrapped to
    cancel the waiter there). The cancellation reaches it, and the slot is free again."""
    slots = AsyncioSlots(1, timeout=5)
    await slots.acquire()  # the one slot, taken
    semaphore = slots._semaphore
    real_acquire = semaphore.acquire

    async def acquire() -> Literal[True]:
        acquired = await real_acquire()
        waiter.cancel()
        return acquired

    monkeypatch.setattr(semaphore, "acquire", acquire)
    waiter = asyncio.ensure_future(slots.acquire())
    await anyio.sleep(0.05)
    assert not waiter.done()  # waiting for the slot
    slots.release()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await anyio.lowlevel.checkpoint()  # the callback giving the slot back runs
    assert not semaphore.locked()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_waiting_for_a_slot_past_the_pool_timeout_is_a_pool_timeout() -> None:
    slots = AsyncioSlots(1, timeout=0.1)
    await slots.acquire()
    with pytest.raises(httpx.PoolTimeout):
        await slots.acquire()
    slots.release()
    await slots.acquire()  # the slot is free, and the timed-out wait took none
    assert slots._semaphore.locked()
