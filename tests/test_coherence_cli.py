"""Coherence through the real CLI: `prompt-middleware serve` processes, a real redis-server, the
fake Langfuse on loopback, signed webhooks over HTTP and `prompt-middleware invalidate`.

Two gateways share one Redis and one webhook secret; they are started once for the module. One
test adds a replica with `server.workers: 2` beside them, one a polling-only gateway. Every test
uses prompt names of its own, so the order of the tests does not matter. The
time bounds are the issue's functional ones: 1 s after a webhook's answer, `poll_interval` + 1 s
for polling; a reconnect after a Redis outage is bounded by the subscriber's capped backoff.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from prompt_middleware.registries.coherence import sign

from .fake_langfuse import FakeLangfuse
from .gateway_process import (
    Gateway,
    gateway_env,
    langfuse_gateway_config,
    only_worker,
    run_cli,
    serving,
    worker_pids,
    write_config,
)
from .redis_fixture import RedisServer, module_redis_server
from .test_coherence_webhook import webhook_headers

__all__ = ["module_redis_server"]

SECRET = "lf-whsec_" + "5e" * 32
WRONG_SECRET = "lf-whsec_" + "a0" * 32
KEYS = ("pk-coh", "sk-coh")
POLL_KEYS = ("pk-poll", "sk-poll")
PROJECT = "project-pk-coh"  # the fake's project id for KEYS
PROBE = "probe"  # changed and invalidated through the CLI to learn both gateways are subscribed
RECONNECT = 15.0  # seconds: the subscriber's backoff is capped at 5 s, plus starting up again


class Pair:
    """The two gateways sharing Redis, and what drives them."""

    def __init__(
        self,
        fake: FakeLangfuse,
        redis: RedisServer,
        config: Path,
        gateways: list[Gateway],
    ) -> None:
        self.fake = fake
        self.redis = redis
        self.config = config
        self.gateways = gateways
        self.client = httpx.Client(timeout=5)
        self.outages = 0  # Redis outages the tests caused

    @property
    def one(self) -> Gateway:
        return self.gateways[0]

    def add(self, name: str) -> int:
        """A new version of `name` in Langfuse, labelled production; its number."""
        return int(self.fake.add_prompt(*KEYS, name, f"{name} at {time.time()}")["version"])

    def cached(self, name: str) -> None:
        """Version 1 of a new prompt `name`, served (and so cached) by both gateways."""
        assert self.add(name) == 1
        assert self.versions(name) == [1, 1]

    def version(self, gateway: Gateway, name: str) -> int:
        body = {"model": "m", "prompt_id": name, "messages": []}
        response = self.client.post(gateway.url + "/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        return int(response.headers["x-prompt-version"])

    def versions(self, name: str) -> list[int]:
        return [self.version(g, name) for g in self.gateways]

    def webhook(
        self, gateway: Gateway, body: bytes, signature: str | None = "sign"
    ) -> httpx.Response:
        headers = webhook_headers(body, signature, SECRET)
        return self.client.post(gateway.url + "/webhooks/langfuse", content=body, headers=headers)

    def invalidate(self, *args: str) -> None:
        # Without the webhook secret the config names: invalidating needs only cache.redis_url.
        done = run_cli("invalidate", *args, "--config", str(self.config), env=gateway_env())
        assert done.returncode == 0, done.stderr

    def subscribed(self, versions: Callable[[str], list[int | None]] | None = None) -> None:
        """Return once both gateways (or whatever `versions` asks, by default both gateways) are
        subscribed: each serves a change only Redis told it of.

        A gateway learns of a change either live or by re-reading the epochs when it
        (re)subscribes; both happen only while subscribed.
        """
        served = versions or self.versions
        deadline = time.monotonic() + RECONNECT
        served(PROBE)  # cached everywhere
        while True:
            new = self.add(PROBE)
            self.invalidate(PROBE)
            round_end = min(deadline, time.monotonic() + 1.0)
            while time.monotonic() < round_end:
                if all(version == new for version in served(PROBE)):
                    return
                time.sleep(0.02)
            assert time.monotonic() < deadline, "the gateways did not (re)subscribe to Redis"


def change(
    name: str, *, delivery: str, kind: str = "prompt-version", project: str = PROJECT
) -> bytes:
    """A Langfuse webhook payload, as Langfuse sends it."""
    return json.dumps(
        {
            "id": delivery,
            "timestamp": "2026-12-07T10:00:00.000Z",
            "type": kind,
            "apiVersion": "v1",
            "action": "updated",
            "prompt": {
                "id": f"id-{name}",
                "name": name,
                "version": 99,
                "projectId": project,
                "labels": ["production"],
                "prompt": "a body the gateway must not cache",
                "type": "text",
                "config": {},
                "commitMessage": None,
            },
        }
    ).encode()


def within(seconds: float, check: Callable[[], bool], what: str) -> None:
    """Poll `check` until true; fail after `seconds` (a functional bound, not a benchmark)."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what} took longer than {seconds} s"
        time.sleep(0.01)


def _env() -> dict[str, str]:
    return gateway_env(LANGFUSE_WEBHOOK_SECRET=SECRET)


@pytest.fixture(scope="module")
def pair(
    served: tuple[FakeLangfuse, str],
    module_redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pair]:
    fake, url = served
    fake.add_prompt(*KEYS, PROBE, "probe")
    folder = tmp_path_factory.mktemp("coherence")
    config = write_config(
        folder / "gateway.json",
        langfuse_gateway_config(url, KEYS, PROBE, redis_url=module_redis_server.url),
    )
    with ExitStack() as stack:
        gateways = [
            stack.enter_context(
                serving("--config", str(config), env=_env(), wait_for="/health/ready")
            )
            for _ in range(2)
        ]
        pair = Pair(fake, module_redis_server, config, gateways)
        stack.callback(pair.client.close)
        pair.subscribed()
        yield pair
    for gateway in gateways:
        assert gateway.process.returncode == 0, gateway.log
        log = "\n".join(gateway.log)
        assert "Traceback" not in log
        assert SECRET not in log
        # One warning per outage and process, not one per reconnect attempt.
        assert sum("is unreachable" in line for line in gateway.log) == pair.outages, log


def test_a_webhook_to_one_gateway_reaches_both_within_a_second(pair: Pair) -> None:
    pair.subscribed()
    pair.cached("greet")
    new = pair.add("greet")
    assert pair.versions("greet") == [1, 1]  # cached for 600 s
    response = pair.webhook(pair.one, change("greet", delivery="cli-greet-1"))
    answered = time.monotonic()
    assert response.status_code == 200
    assert response.json() == {"status": "accepted"}
    within(1.0, lambda: pair.versions("greet") == [new, new], "serving the new version")
    assert time.monotonic() - answered < 1.0
    # Langfuse retries a delivery with the same id: to either gateway, nothing happens twice.
    pair.add("greet")
    for gateway in pair.gateways:
        again = pair.webhook(gateway, change("greet", delivery="cli-greet-1"))
        assert again.json() == {"status": "duplicate"}
    assert pair.versions("greet") == [new, new]


def test_bad_signatures_are_401_and_invalidate_nothing(pair: Pair) -> None:
    pair.subscribed()
    pair.cached("guarded")
    pair.add("guarded")
    body = change("guarded", delivery="cli-guarded-1")
    now = int(time.time())
    refused = {
        "unsigned": None,
        "wrong secret": sign(body, WRONG_SECRET),
        "stale timestamp": sign(body, SECRET, now - 3600),
        "from the future": sign(body, SECRET, now + 3600),
        "body changed": sign(body.replace(b"guarded", b"guarder"), SECRET),
        "garbage": "t=now,v1=nothing",
    }
    for what, signature in refused.items():
        for gateway in pair.gateways:
            response = pair.webhook(gateway, body, signature)
            assert response.status_code == 401, what
            assert response.json()["error"]["code"] == "invalid_webhook_signature"
    # Ignored event types are answered 2xx (Langfuse disables a failing automation).
    for kind in ("trace-create", "prompt-label", "something-new"):
        response = pair.webhook(pair.one, change("guarded", delivery=f"k-{kind}", kind=kind))
        assert response.status_code == 200
        assert response.json() == {"status": "ignored"}
    # Signed but not a Langfuse payload: 400 (an attacker cannot produce one without the secret).
    assert pair.webhook(pair.one, b"[1, 2]").status_code == 400
    # Had any of these invalidated something, it would have been published before this:
    # Redis delivers in order, so once the barrier is served everywhere, so would that be.
    barrier = pair.add("guarded-barrier")
    pair.invalidate("guarded-barrier")
    within(1.0, lambda: pair.versions("guarded-barrier") == [barrier, barrier], "the barrier")
    assert pair.versions("guarded") == [1, 1]


def test_the_invalidate_cli_reaches_running_gateways(pair: Pair) -> None:
    pair.subscribed()
    pair.cached("cli-a")
    pair.cached("cli-b")
    a, b = pair.add("cli-a"), pair.add("cli-b")
    pair.invalidate("cli-a")
    within(1.0, lambda: pair.versions("cli-a") == [a, a], "invalidate cli-a")
    assert pair.versions("cli-b") == [1, 1]  # only the named prompt
    done = run_cli("invalidate", "--redis-url", pair.redis.url, env=_env())  # every prompt
    assert done.returncode == 0, done.stderr
    assert "every prompt" in done.stderr + done.stdout
    within(1.0, lambda: pair.versions("cli-b") == [b, b], "invalidate everything")


def test_the_invalidate_cli_reads_only_the_redis_url(pair: Pair, tmp_path: Path) -> None:
    data = json.loads(pair.config.read_text())
    data["cache"]["redis_url"] = "os.environ/REDIS_URL"
    data["upstreams"]["echo"]["api_key"] = "os.environ/UPSTREAM_KEY_NOT_SET_HERE"
    config = write_config(tmp_path / "env.json", data)
    pair.cached("cli-env")
    new = pair.add("cli-env")
    done = run_cli("invalidate", "cli-env", "--config", str(config), env=gateway_env())
    assert done.returncode != 0
    assert "cache.redis_url: environment variable REDIS_URL is not set" in done.stderr
    env = gateway_env(REDIS_URL=pair.redis.url)
    done = run_cli("invalidate", "cli-env", "--config", str(config), env=env)
    assert done.returncode == 0, done.stderr
    within(1.0, lambda: pair.versions("cli-env") == [new, new], "invalidate through REDIS_URL")
    data["cache"]["redis_url"] = "http://127.0.0.1:1/"
    done = run_cli("invalidate", "--config", str(write_config(config, data)), env=env)
    assert "expected a redis:// or rediss:// URL" in done.stderr
    del data["cache"]["redis_url"]
    done = run_cli("invalidate", "--config", str(write_config(config, data)), env=env)
    assert done.returncode != 0
    assert "cache.redis_url is not set" in done.stderr


def test_the_invalidate_cli_says_when_redis_is_unreachable(pair: Pair) -> None:
    from .servers import free_port

    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    done = run_cli("invalidate", "greet", "--redis-url", url, env=_env())
    assert done.returncode != 0
    assert "Redis did not take the invalidation" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout


def test_redis_killed_mid_run(pair: Pair) -> None:
    pair.subscribed()
    pair.cached("outage")
    pair.redis.stop()
    pair.outages += 1
    try:
        # Requests keep succeeding, from each gateway's own cache.
        for _ in range(10):
            assert pair.versions("outage") == [1, 1]
        # A webhook still invalidates where it lands, answered at once.
        second = pair.add("outage")
        response = pair.webhook(pair.one, change("outage", delivery="cli-outage-1"))
        assert response.status_code == 200
        assert pair.versions("outage") == [second, 1]
        for _ in range(10):
            assert pair.version(pair.gateways[1], "outage") == 1
    finally:
        pair.redis.start()  # empty, on the same port
    # Back: the other gateway hears of the change made meanwhile (the queued publish, or the
    # epochs it re-reads when it subscribes again).
    within(RECONNECT, lambda: pair.versions("outage") == [second, second], "catching up")
    pair.subscribed()
    # And a new change reaches everyone again within the bound, this time from the other side.
    third = pair.add("outage")
    response = pair.webhook(pair.gateways[1], change("outage", delivery="cli-outage-2"))
    assert response.status_code == 200
    within(1.0, lambda: pair.versions("outage") == [third, third], "after the outage")


def test_polling_alone_picks_up_a_change(served: tuple[FakeLangfuse, str], tmp_path: Path) -> None:
    fake, url = served
    interval = 0.5
    fake.add_prompt(*POLL_KEYS, PROBE, "probe")
    fake.add_prompt(*POLL_KEYS, "polled", "v1")
    config = write_config(
        tmp_path / "polling.json",
        langfuse_gateway_config(url, POLL_KEYS, PROBE, poll_interval=interval, webhook=False),
    )
    body = {"model": "m", "prompt_id": "polled", "messages": []}

    def version(gateway: Gateway) -> int:
        response = httpx.post(gateway.url + "/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        return int(response.headers["x-prompt-version"])

    with serving("--config", str(config), env=_env(), wait_for="/health/ready") as gateway:
        assert version(gateway) == 1
        time.sleep(interval)  # a poll or two that find nothing new
        assert version(gateway) == 1
        fake.add_prompt(*POLL_KEYS, "polled", "v2")
        within(interval + 1.0, lambda: version(gateway) == 2, "polling")
    assert gateway.process.returncode == 0, gateway.log
    assert "Traceback" not in "\n".join(gateway.log)


def test_every_worker_of_a_multi_worker_replica_hears_it(pair: Pair, tmp_path: Path) -> None:
    """A replica with `server.workers: 2` beside the pair: a webhook to the pair reaches both
    of its workers. Which worker takes a connection is the kernel's choice, so each check stops
    the other worker for its one request: the one left running must accept it."""
    pair.subscribed()
    data = json.loads(pair.config.read_text())
    data["server"] = {**data["server"], "workers": 2}
    config = write_config(tmp_path / "workers.json", data)
    name = "many-workers"
    pair.add(name)

    def version(replica: Gateway, worker: int, name: str) -> int | None:
        """The version of `name` that `worker` serves; None while it is still starting."""
        body = {"model": "m", "prompt_id": name, "messages": []}
        with only_worker(replica, worker), httpx.Client(timeout=2) as client:
            try:
                response = client.post(replica.url + "/v1/chat/completions", json=body)
            except httpx.TimeoutException:
                return None
        assert response.status_code == 200, response.text
        return int(response.headers["x-prompt-version"])

    with serving("--config", str(config), env=_env(), wait_for="/health/ready") as replica:
        within(30.0, lambda: len(worker_pids(replica)) == 2, "two workers")
        workers = worker_pids(replica)

        def versions(name: str) -> list[int | None]:
            return [version(replica, worker, name) for worker in workers]

        # Ready means one worker answers; the other may still be starting on a loaded machine.
        # A worker drops what it cached before its first subscription (the epochs it missed), so
        # both must be subscribed before they cache the prompt.
        pair.subscribed(versions)
        assert versions(name) == [1, 1]
        new = pair.add(name)
        # Each worker holds its own cached copy: without a change event both keep version 1.
        assert versions(name) == [1, 1]
        response = pair.webhook(pair.one, change(name, delivery="cli-many-workers"))
        assert response.status_code == 200
        within(1.0, lambda: versions(name) == [new, new], "both")
        assert worker_pids(replica) == workers  # the same two processes throughout
    assert replica.process.returncode == 0, replica.log
    assert "Traceback" not in "\n".join(replica.log)
