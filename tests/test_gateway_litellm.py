"""LiteLLM's prompt-management config.yaml, as shipped in examples/, run by the real CLI.

Only `api_base` is added (pointing at a recording upstream); Langfuse is the fake Langfuse server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from prompt_middleware.testing import CaptureApp

from .fake_langfuse import FakeLangfuse
from .gateway_process import ROOT, Gateway, gateway_env, serving
from .servers import running_server

PUBLIC, SECRET = "pk-lf-litellm", "sk-lf-litellm"
OPENAI_KEY = "sk-openai-upstream"
PROMPT_ID = "<langfuse_prompt_id>"  # the seed's placeholder, kept as is


@pytest.fixture(scope="module")
def gateway(
    served: tuple[FakeLangfuse, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, CaptureApp, FakeLangfuse]]:
    fake, langfuse_url = served
    fake.add_prompt(PUBLIC, SECRET, PROMPT_ID, "Write about {{key}}.")
    upstream = CaptureApp()
    config = yaml.safe_load((ROOT / "examples" / "litellm_config.yaml").read_text())
    with running_server(upstream) as upstream_url:
        for entry in config["model_list"]:
            entry["litellm_params"]["api_base"] = upstream_url + "/v1"
        path = tmp_path_factory.mktemp("litellm") / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        env = gateway_env(
            OPENAI_API_KEY=OPENAI_KEY,
            LANGFUSE_PUBLIC_KEY=PUBLIC,
            LANGFUSE_SECRET_KEY=SECRET,
            LANGFUSE_HOST=langfuse_url,
        )
        # --cache-ttl 0: a flag over the file, so a new prompt version shows at once.
        with serving("--config", str(path), "--cache-ttl", "0", env=env) as running:
            yield running, upstream, fake
        assert running.process.returncode == 0, running.log
        assert not any(OPENAI_KEY in line or SECRET in line for line in running.log)


def test_seed_request_through_the_alias_chain(
    gateway: tuple[Gateway, CaptureApp, FakeLangfuse],
) -> None:
    running, upstream, _ = gateway
    # The seed's curl: Authorization: Bearer sk-1234, base URL without /v1.
    response = httpx.post(
        running.url + "/v1/chat/completions",
        headers={"Authorization": "Bearer sk-1234"},
        json={
            "model": "my-langfuse-model",
            "messages": [{"role": "user", "content": "THIS WILL BE IGNORED"}],
            "prompt_variables": {"key": "this is used"},
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-prompt-name"] == "%3Clangfuse_prompt_id%3E"  # percent-encoded
    received = upstream.last
    assert received.path == "/v1/chat/completions"
    assert received.json == {
        "model": "gpt-3.5-turbo",
        "messages": [{"role": "user", "content": "Write about this is used."}],
    }
    assert received.headers.getlist("authorization") == [f"Bearer {OPENAI_KEY}"]

    with openai.OpenAI(api_key="anything", base_url=running.url, max_retries=0) as client:
        client.chat.completions.create(
            model="openai-model", messages=[{"role": "user", "content": "a short poem"}]
        )
        assert upstream.last.json == {
            "model": "gpt-3.5-turbo",
            "messages": [{"role": "user", "content": "a short poem"}],
        }
        assert upstream.last.path == "/v1/chat/completions"
        assert [m.id for m in client.models.list().data] == ["my-langfuse-model", "openai-model"]


def test_prompt_config_model_wins(gateway: tuple[Gateway, CaptureApp, FakeLangfuse]) -> None:
    running, upstream, fake = gateway
    fake.add_prompt(PUBLIC, SECRET, PROMPT_ID, "Now {{key}}.", config={"model": "gpt-4o"})
    with openai.OpenAI(api_key="sk-1234", base_url=running.url, max_retries=0) as client:
        client.chat.completions.create(
            model="my-langfuse-model",
            messages=[{"role": "user", "content": "ignored"}],
            extra_body={"prompt_variables": {"key": "this"}},
        )
    assert upstream.last.json["model"] == "gpt-4o"
    assert upstream.last.messages == [{"role": "user", "content": "Now this."}]


def test_master_key(tmp_path: Path, served: tuple[FakeLangfuse, str]) -> None:
    """With general_settings.master_key, that key is needed, and only it."""
    text = (ROOT / "examples" / "litellm_config.yaml").read_text()
    path = tmp_path / "config.yaml"
    path.write_text(text + "general_settings:\n  master_key: sk-1234\n")
    env = gateway_env(
        OPENAI_API_KEY=OPENAI_KEY,
        LANGFUSE_PUBLIC_KEY=PUBLIC,
        LANGFUSE_SECRET_KEY=SECRET,
        LANGFUSE_HOST=served[1],
    )
    with serving("--config", str(path), "--upstream", "echo", env=env) as running:
        with (
            openai.OpenAI(api_key="sk-wrong", base_url=running.url, max_retries=0) as client,
            pytest.raises(openai.AuthenticationError),
        ):
            client.chat.completions.create(model="openai-model", messages=[])
        with openai.OpenAI(api_key="sk-1234", base_url=running.url, max_retries=0) as client:
            completion = client.chat.completions.create(model="openai-model", messages=[])
        assert '"model": "gpt-3.5-turbo"' in (completion.choices[0].message.content or "")
    assert "auth: 1 client key" in "\n".join(running.log)
