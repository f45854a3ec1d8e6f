"""Every example runs: the apps in-process and on a real server, the CLI guide's commands parse."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import openai
import pytest
from openai.types.chat import ChatCompletionUserMessageParam

from prompt_middleware.gateway.cli import _parser, main
from prompt_middleware.testing import asgi_client, openai_client

from .servers import running_server

pytestmark = [
    pytest.mark.anyio,
    # openai's AsyncStream stops at `[DONE]` without closing its inner async generators; trio
    # warns when they are collected.
    pytest.mark.filterwarnings(
        r"ignore:Async generator '(openai|httpx2?|httpcore2?)\.:ResourceWarning"
    ),
]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TRIAGE_SYSTEM = (
    "You triage support tickets for Acme Cloud. Answer with one of: bug, billing, question."
)
TICKET: ChatCompletionUserMessageParam = {
    "role": "user",
    "content": "I was charged twice this month.",
}
TRIAGE = {"prompt_id": "support/triage", "prompt_variables": {"product": "Acme Cloud"}}


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fastapi_example(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # dry run through the echo upstream
    return _load("fastapi_app")


@pytest.fixture
def gateway_example(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.delenv("UPSTREAM_URL", raising=False)
    monkeypatch.delenv("GATEWAY_KEY", raising=False)
    return _load("wrap_gateway")


async def test_fastapi_app(fastapi_example: ModuleType) -> None:
    async with openai_client(fastapi_example.app) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[TICKET], extra_body=TRIAGE
        )
        sent = json.loads(raw.parse().choices[0].message.content or "")
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[TICKET], stream=True, extra_body=TRIAGE
        )
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert raw.headers["x-prompt-name"] == "support/triage"
    assert sent["messages"] == [{"role": "system", "content": TRIAGE_SYSTEM}, TICKET]
    assert (sent["temperature"], sent["max_tokens"]) == (0, 20)
    assert json.loads(streamed)["messages"] == sent["messages"]


async def test_fastapi_app_without_a_prompt(fastapi_example: ModuleType) -> None:
    async with asgi_client(fastapi_example.app) as client:
        response = await client.post(
            "/v1/chat/completions", json={"model": "m", "messages": [TICKET]}
        )
    assert "x-prompt-name" not in response.headers
    sent = json.loads(response.json()["choices"][0]["message"]["content"])
    assert sent == {"model": "m", "messages": [TICKET]}


async def test_wrapped_gateway(gateway_example: ModuleType) -> None:
    async with openai_client(gateway_example.app, api_key="sk-gateway") as client:
        completion = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[TICKET], extra_body=TRIAGE
        )
        models = await client.models.list()
    sent = json.loads(completion.choices[0].message.content or "")
    assert sent["messages"] == [{"role": "system", "content": TRIAGE_SYSTEM}, TICKET]
    assert [model.id for model in models.data] == ["echo"]

    async with openai_client(gateway_example.app, api_key="wrong") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model="m", messages=[TICKET])
        # Checked before the prompt is looked up: an unknown prompt is no 404 without a key.
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(
                model="m", messages=[TICKET], extra_body={"prompt_id": "no/such/prompt"}
            )


async def test_wrapped_gateway_forwarding_to_an_upstream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prompt_middleware.testing import CaptureApp

    upstream = CaptureApp()
    with running_server(upstream) as upstream_url:
        monkeypatch.setenv("UPSTREAM_URL", upstream_url + "/v1")
        monkeypatch.setenv("UPSTREAM_API_KEY", "sk-upstream")
        monkeypatch.delenv("GATEWAY_KEY", raising=False)
        example = _load("wrap_gateway")
        with running_server(example.app) as gateway_url:
            async with openai.AsyncOpenAI(
                api_key="sk-gateway", base_url=gateway_url + "/v1", max_retries=0
            ) as client:
                stream = await client.chat.completions.create(
                    model="gpt-4o-mini", messages=[TICKET], stream=True, extra_body=TRIAGE
                )
                chunks = [chunk async for chunk in stream]
    assert len(chunks) > 3
    received = upstream.last
    assert received.path == "/v1/chat/completions"
    assert received.headers.getlist("authorization") == ["Bearer sk-upstream"]
    assert received.messages == [{"role": "system", "content": TRIAGE_SYSTEM}, TICKET]


def test_quickstart_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "prompt: support/triage" in result.stdout


def _guide_commands() -> list[list[str]]:
    """The `prompt-middleware ...` command lines in standalone.md's shell blocks."""
    text = (EXAMPLES / "standalone.md").read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL):
        for line in block.splitlines():
            if re.match(r"([A-Z_]+=\S+ )*prompt-middleware ", line):
                words = shlex.split(line)
                commands.append(words[words.index("prompt-middleware") + 1 :])
    return commands


def test_standalone_guide_commands_parse() -> None:
    commands = _guide_commands()
    assert {args[0] for args in commands} == {"serve", "render"}
    for args in commands:
        _parser().parse_args(args)


def test_standalone_guide_render_commands_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    renders = [args for args in _guide_commands() if args[0] == "render"]
    assert renders
    for args in renders:
        assert main(args) == 0, capsys.readouterr().err
        assert json.loads(capsys.readouterr().out)
