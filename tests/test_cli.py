"""The `prompt-middleware` command: serve and render as real subprocesses, details in-process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.responses import ResponsePromptParam

from prompt_middleware.gateway.cli import main
from prompt_middleware.testing import CaptureApp

from .servers import free_port, running_server

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = "examples/prompts"
COMMAND = [sys.executable, "-m", "prompt_middleware"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "UPSTREAM_API_KEY"}
    env.update(extra)
    return env


def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args],
        cwd=ROOT,
        env=_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@contextmanager
def _serving(*args: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, list[str]]]:
    """Run `serve` on a free port until it answers; yield its URL and (after exit) its log."""
    port = free_port()
    log: list[str] = []
    process = subprocess.Popen(
        [*COMMAND, "serve", *args, "--port", str(port)],
        cwd=ROOT,
        env=env or _env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, "serve exited early"
            assert time.monotonic() < deadline, "serve did not start"
            try:
                httpx.get(url + "/v1/models", timeout=0.5)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url, log
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, stderr = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
        log.extend(stderr.splitlines())
    assert process.returncode == 0, log


def test_serve_echo_dry_run() -> None:
    with (
        _serving("--upstream", "echo", "--prompts", PROMPTS) as (url, log),
        openai.OpenAI(api_key="sk-any", base_url=url + "/v1", max_retries=0) as client,
    ):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "my card was charged twice"}],
            extra_body={"prompt_id": "support/triage", "prompt_variables": {"product": "Acme"}},
        )
        sent = json.loads(raw.parse().choices[0].message.content or "")
        stream = client.chat.completions.create(
            model="m", messages=[], stream=True, extra_body={"prompt_id": "greeting"}
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert raw.headers["x-prompt-name"] == "support/triage"
    assert sent["messages"] == [
        {
            "role": "system",
            "content": "You triage support tickets for Acme. Answer with one of: bug, billing, "
            "question.",
        },
        {"role": "user", "content": "my card was charged twice"},
    ]
    assert sent["temperature"] == 0
    assert json.loads(streamed)["messages"][0]["role"] == "user"
    startup = [line for line in log if "listening on" in line]
    assert len(startup) == 1
    assert url in startup[0]
    assert "examples/prompts" in startup[0]
    assert "upstream: echo" in startup[0]


def test_serve_proxies_with_server_side_key() -> None:
    upstream = CaptureApp()
    with (
        running_server(upstream) as upstream_url,
        _serving(
            "--upstream",
            upstream_url + "/v1",
            "--prompts",
            PROMPTS,
            "--cache-ttl",
            "0",
            env=_env(UPSTREAM_API_KEY="sk-server-secret"),
        ) as (url, log),
    ):
        response = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "m", "prompt_id": "greeting", "prompt_variables": {"name": "Ada"}},
            headers={"authorization": "Bearer client-token"},
        )
    assert response.status_code == 200
    received = upstream.last
    assert received.path == "/v1/chat/completions"
    assert received.headers.getlist("authorization") == ["Bearer sk-server-secret"]
    assert received.json["messages"][0]["content"].startswith("Say hello to Ada in {{ language }}")
    startup = next(line for line in log if "listening on" in line)
    assert "server-side API key" in startup
    assert "sk-server-secret" not in "\n".join(log)


def test_render_prints_compiled_messages() -> None:
    result = _run("render", "support/triage", "--var", "product=Acme", "--prompts", PROMPTS)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        {
            "role": "system",
            "content": "You triage support tickets for Acme. Answer with one of: bug, billing, "
            "question.",
        }
    ]
    # The unfilled placeholder is dropped, and said so.
    assert result.stderr.count("\n") == 1
    assert "placeholders conversation" in result.stderr


def test_render_unknown_prompt_is_one_line() -> None:
    result = _run("render", "no/such/prompt", "--prompts", PROMPTS)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "prompt-middleware: error: Prompt 'no/such/prompt' label 'production' not found."
    ]


def test_render_vars_json_from_stdin() -> None:
    variables = {"style": "terse", "words": 20, "text": "Long text."}
    result = _run(
        "render",
        "summarize",
        "--vars-json",
        "-",
        "--var",
        "words=10",
        "--prompts",
        PROMPTS,
        stdin=json.dumps(variables),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"role": "system", "content": "You write terse summaries of at most 10 words."},
        {"role": "user", "content": "Long text."},
    ]
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["greeting", "--var", "novalue"], "--var 'novalue': expected NAME=VALUE"),
        (["greeting", "--vars-json", "missing.json"], "cannot read missing.json"),
        (["greeting", "--vars-json", "{bad}"], "not valid JSON"),
        (["greeting", "--vars-json", "[1]"], "must hold a JSON object"),
        (["summarize", "--version", "9"], "Prompt 'summarize' version 9 not found."),
        (["summarize", "--label", "staging"], "Prompt 'summarize' label 'staging' not found."),
        (["summarize", "--version", "1", "--strict-variables"], "left unfilled: variables text"),
        (["../escape", "--strict-variables"], "not found"),
    ],
)
def test_render_errors(
    args: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    if "{bad}" in args or "[1]" in args:
        at = args.index("--vars-json") + 1
        (tmp_path / "vars.json").write_text(args[at])
        args = [*args[:at], "vars.json", *args[at + 1 :]]
    assert main(["render", *args, "--prompts", str(ROOT / PROMPTS)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("prompt-middleware: error: ")
    assert message in err


def test_registry_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["render", "x", "--prompts", str(tmp_path / "none")]) == 1
    assert "does not exist" in capsys.readouterr().err

    for name in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert main(["render", "x", "--langfuse"]) == 1
    assert "LANGFUSE_PUBLIC_KEY" in capsys.readouterr().err

    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-test")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-test")
    monkeypatch.setenv("LANGFUSE_HOST", f"http://127.0.0.1:{free_port()}")
    assert main(["render", "x", "--langfuse"]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert "unavailable" in err
    assert "sk-lf-test" not in err


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--upstream", "echo"],  # no registry
        ["serve", "--prompts", PROMPTS],  # no upstream
        ["render", "x", "--prompts", PROMPTS, "--langfuse"],
        ["render", "x", "--version", "1", "--label", "l", "--prompts", PROMPTS],
        [],
    ],
)
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_serve_rejects_bad_upstream(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--upstream", "localhost:8000", "--prompts", str(ROOT / PROMPTS)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("prompt-middleware: error: --upstream: base_url must be")
    assert len(err.splitlines()) == 1


def test_serve_without_uvicorn(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main(["serve", "--upstream", "echo", "--prompts", str(ROOT / PROMPTS)]) == 1
    assert "pip install 'prompt-middleware[server]'" in capsys.readouterr().err


def test_serve_responses_with_hosted_prompt_object() -> None:
    """OpenAI's hosted-prompt call, unchanged, through the gateway (issue: migration path)."""
    with (
        _serving("--upstream", "echo", "--prompts", PROMPTS) as (url, _),
        openai.OpenAI(api_key="sk-any", base_url=url + "/v1", max_retries=0) as client,
    ):
        prompt: ResponsePromptParam = {
            "id": "pmpt_abc123",
            "version": "3",
            "variables": {"city": "Lyon", "traveller": {"type": "input_text", "text": "Ada"}},
        }
        response = client.responses.create(model="gpt-4.1", prompt=prompt, input="Three days.")
        with client.responses.stream(model="gpt-4.1", prompt=prompt, input="Two days.") as stream:
            final = stream.get_final_response()
    expected = [{"role": "developer", "content": "You plan trips to Lyon for Ada."}]
    assert json.loads(response.output_text)["input"] == [
        *expected,
        {"role": "user", "content": "Three days."},
    ]
    assert json.loads(final.output_text)["input"] == [
        *expected,
        {"role": "user", "content": "Two days."},
    ]


def test_render_and_serve_with_langfuse() -> None:
    """`--langfuse` reads the LANGFUSE_* variables, as the Langfuse SDK does."""
    from .fake_langfuse import FakeLangfuse, running_fake

    fake = FakeLangfuse()
    fake.add_prompt("pk-lf-cli", "sk-lf-cli", "team/hello", "Hello {{who}} from Langfuse")
    with running_fake(fake) as langfuse_url:
        env = _env(
            LANGFUSE_PUBLIC_KEY="pk-lf-cli",
            LANGFUSE_SECRET_KEY="sk-lf-cli",
            LANGFUSE_HOST=langfuse_url,
        )
        rendered = subprocess.run(
            [*COMMAND, "render", "team/hello", "--var", "who=CLI", "--langfuse"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        with (
            _serving("--upstream", "echo", "--langfuse", env=env) as (url, log),
            openai.OpenAI(api_key="sk-any", base_url=url + "/v1", max_retries=0) as client,
        ):
            result = client.chat.completions.create(
                model="m",
                messages=[],
                extra_body={"prompt_id": "team/hello", "prompt_variables": {"who": "gateway"}},
            )
    assert rendered.returncode == 0, rendered.stderr
    assert json.loads(rendered.stdout) == [{"role": "user", "content": "Hello CLI from Langfuse"}]
    sent = json.loads(result.choices[0].message.content or "")
    assert sent["messages"] == [{"role": "user", "content": "Hello gateway from Langfuse"}]
    assert not any("sk-lf-cli" in line for line in log)
