"""Weighted label experiments: the pure choice, and the middleware applying it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from prompt_middleware.core.errors import PromptNotFound
from prompt_middleware.core.experiments import (
    Experiment,
    check_experiments,
    choose_label,
    experiment_refs,
    parse_experiments,
    sticky_key,
)
from prompt_middleware.core.prompts import Prompt, PromptRef
from prompt_middleware.middleware import PromptMiddleware
from prompt_middleware.registries.memory import InMemoryRegistry
from prompt_middleware.testing import CaptureApp, asgi_client

pytestmark = pytest.mark.anyio

NAME = "support/triage"
EXPERIMENTS = parse_experiments(
    {NAME: {"labels": {"production": 90, "candidate": 10}, "sticky": "user"}}
)
USERS = [f"user-{i}" for i in range(1000)]
ASSIGN_SCRIPT = """
import json, sys
from prompt_middleware.core.experiments import choose_label, parse_experiments
experiments = parse_experiments(json.loads(sys.argv[1]))
print(json.dumps([choose_label("support/triage", experiments, f"user-{i}") for i in range(1000)]))
"""


def test_thousand_users_split_by_weight() -> None:
    counts = Counter(choose_label(NAME, EXPERIMENTS, user) for user in USERS)
    assert set(counts) == {"production", "candidate"}
    assert abs(counts["candidate"] / 1000 - 0.10) <= 0.04
    assert abs(counts["production"] / 1000 - 0.90) <= 0.04


def test_three_way_split_within_tolerance() -> None:
    experiments = parse_experiments({"p": {"labels": {"a": 50, "b": 30, "c": 20}}})
    counts = Counter(choose_label("p", experiments, user) for user in USERS)
    for label, weight in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
        assert abs(counts[label] / 1000 - weight) <= 0.04


def test_sticky_per_user_and_per_prompt() -> None:
    first = [choose_label(NAME, EXPERIMENTS, user) for user in USERS]
    again = [choose_label(NAME, EXPERIMENTS, user) for user in USERS]
    assert first == again
    other = parse_experiments({"other": {"labels": {"production": 90, "candidate": 10}}})
    # The prompt name is part of the hash: a user is not in the candidate arm of every rollout.
    assert first != [choose_label("other", other, user) for user in USERS]


def test_identical_assignment_in_separate_processes() -> None:
    config = json.dumps({NAME: {"labels": {"production": 90, "candidate": 10}}})
    runs = [
        subprocess.run(
            [sys.executable, "-c", ASSIGN_SCRIPT, config],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            # Different hash seeds: nothing may depend on Python's randomised str hash.
            env={"PYTHONHASHSEED": str(seed), "PATH": ""},
        ).stdout
        for seed in (1, 2)
    ]
    assert json.loads(runs[0]) == json.loads(runs[1])
    assert json.loads(runs[0]) == [choose_label(NAME, EXPERIMENTS, user) for user in USERS]


def test_no_sticky_key_draws_per_request() -> None:
    experiments = parse_experiments({"p": {"labels": {"a": 1, "b": 1}}})
    assert {choose_label("p", experiments, None) for _ in range(200)} == {"a", "b"}


def test_zero_weight_is_never_chosen_and_not_preloaded() -> None:
    experiments = parse_experiments({"p": {"labels": {"a": 1, "off": 0}}})
    assert {choose_label("p", experiments, user) for user in USERS} == {"a"}
    assert experiment_refs(experiments) == [PromptRef("p", label="a")]


def test_prompt_without_experiment() -> None:
    assert choose_label("unrelated", EXPERIMENTS, "user-1") is None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"p": {"labels": {}}}, "at least one label"),
        ({"p": {"labels": {"a": -1}}}, "weight of label 'a'"),
        ({"p": {"labels": {"a": 0}}}, "must not all be 0"),
        ({"p": {"labels": {"a": True}}}, "weight of label 'a'"),
        ({"p": {"labels": {"a": 1}, "sticky": "cookie"}}, "sticky"),
        ({"p": {"labels": {"a": 1}, "weights": 1}}, "unknown keys"),
        ({"p": {"labels": ["a"]}}, "map labels to weights"),
    ],
)
def test_invalid_experiments_name_the_entry(config: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_experiments(config)  # type: ignore[arg-type]
    assert "'p'" in str(info.value)


def test_sticky_key_sources() -> None:
    user = Experiment((("a", 1.0),), "user")
    header = Experiment((("a", 1.0),), "header")
    headers = [(b"X-Prompt-Sticky-Key", b"team-7")]
    assert sticky_key(user, {"user": "u1"}, headers) == "u1"
    assert sticky_key(user, {}, headers) == "team-7"
    assert sticky_key(header, {"user": "u1"}, headers) == "team-7"
    assert sticky_key(header, {"user": "u1"}, []) is None
    assert sticky_key(user, {"user": 5}, []) is None


# Through the middleware


def _registry() -> InMemoryRegistry:
    return InMemoryRegistry(
        [
            Prompt(NAME, 1, "text", "stable", labels=("production",)),
            Prompt(NAME, 2, "text", "new", labels=("candidate",)),
        ]
    )


async def test_middleware_applies_the_experiment() -> None:
    capture = CaptureApp()
    app = PromptMiddleware(capture, _registry(), experiments=EXPERIMENTS)
    expected = {user: choose_label(NAME, EXPERIMENTS, user) for user in USERS[:60]}
    async with asgi_client(app) as client:
        for user, label in expected.items():
            body = {"model": "m", "prompt_id": NAME, "user": user}
            for _ in range(2):  # sticky: the same answer every time
                response = await client.post("/v1/chat/completions", json=body)
                assert response.status_code == 200
                assert response.headers["x-prompt-label"] == label
                assert response.headers["x-prompt-version"] == (
                    "2" if label == "candidate" else "1"
                )
                assert capture.last.state["prompt_label"] == label
    assert "candidate" in expected.values()


async def test_explicit_version_or_label_wins() -> None:
    capture = CaptureApp()
    experiments = {NAME: {"labels": {"candidate": 1}}}
    app = PromptMiddleware(capture, _registry(), experiments=experiments)
    async with asgi_client(app) as client:
        by_label = {"model": "m", "prompt_id": NAME, "prompt_label": "production", "user": "u"}
        response = await client.post("/v1/chat/completions", json=by_label)
        assert response.headers["x-prompt-version"] == "1"
        assert response.headers["x-prompt-label"] == "production"
        by_version = {"model": "m", "prompt_id": NAME, "prompt_version": 1, "user": "u"}
        response = await client.post("/v1/chat/completions", json=by_version)
        assert response.headers["x-prompt-version"] == "1"
        assert "x-prompt-label" not in response.headers
        plain = {"model": "m", "prompt_id": NAME, "user": "u"}
        response = await client.post("/v1/chat/completions", json=plain)
        assert response.headers["x-prompt-version"] == "2"
        assert response.headers["x-prompt-label"] == "candidate"


async def test_default_label_is_in_the_header_without_experiments() -> None:
    app = PromptMiddleware(CaptureApp(), _registry())
    async with asgi_client(app) as client:
        response = await client.post("/v1/chat/completions", json={"prompt_id": NAME})
    assert response.headers["x-prompt-label"] == "production"


async def test_label_without_a_prompt_is_an_error_naming_it() -> None:
    capture = CaptureApp()
    experiments = {NAME: {"labels": {"canary": 1}}}
    app = PromptMiddleware(capture, _registry(), experiments=experiments)
    async with asgi_client(app) as client:
        response = await client.post("/v1/chat/completions", json={"prompt_id": NAME})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "prompt_not_found"
    assert "'canary'" in error["message"]
    assert "experiment" in error["message"]
    assert capture.requests == []


async def test_sticky_header_through_the_middleware() -> None:
    experiments = parse_experiments({NAME: {"labels": {"production": 50, "candidate": 50}}})
    app = PromptMiddleware(CaptureApp(), _registry(), experiments=experiments, cache_ttl=0)
    async with asgi_client(app) as client:
        for key in ("team-1", "team-2", "team-3"):
            response = await client.post(
                "/v1/chat/completions",
                json={"prompt_id": NAME},
                headers={"x-prompt-sticky-key": key},
            )
            assert response.headers["x-prompt-label"] == choose_label(NAME, experiments, key)


async def test_check_experiments_names_missing_labels() -> None:
    experiments = parse_experiments(
        {
            NAME: {"labels": {"production": 1, "candidate": 1, "canary": 1}},
            "gone": {"labels": {"x": 1}},
        }
    )
    with pytest.raises(PromptNotFound) as info:
        await check_experiments(experiments, _registry())
    assert info.value.message == (
        "Experiments choose labels that no prompt version has: "
        "'support/triage' label 'canary', 'gone' label 'x'."
    )
    await check_experiments(parse_experiments({NAME: {"labels": {"candidate": 1}}}), _registry())
