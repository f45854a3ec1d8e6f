"""The three setups of docs/coherence.md are complete gateway configs that wire what they say."""

from __future__ import annotations

import re
import shlex
import textwrap
from pathlib import Path

import pytest

from prompt_middleware.gateway.app import build_app
from prompt_middleware.gateway.cli import _parser
from prompt_middleware.gateway.config import load_config

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "coherence.md").read_text(encoding="utf-8")
SETUP = re.compile(r"^### ([ABC])\. .*?^```yaml\n(.*?)^```", flags=re.M | re.S)
ENV = {
    "LANGFUSE_PUBLIC_KEY": "pk-lf-docs",
    "LANGFUSE_SECRET_KEY": "sk-lf-docs",
    "LANGFUSE_WEBHOOK_SECRET": "lf-whsec_docs",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "OPENAI_API_KEY": "sk-docs",
    "GATEWAY_KEY": "gateway-docs",
}
# setup -> (webhook route, Redis, poll interval)
EXPECTED = {"A": (True, True, None), "B": (False, True, None), "C": (False, False, 30.0)}


def setups() -> dict[str, str]:
    return {letter: textwrap.dedent(body) for letter, body in SETUP.findall(PAGE)}


def test_the_page_shows_three_setups() -> None:
    assert sorted(setups()) == ["A", "B", "C"]


@pytest.mark.parametrize("letter", sorted(EXPECTED))
def test_each_setup_is_a_working_config(
    letter: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "gateway.yaml"
    path.write_text(setups()[letter])
    app = build_app(load_config(str(path)))
    coherence = app.coherence
    assert coherence is not None
    webhook, redis, poll = EXPECTED[letter]
    assert (coherence.webhook_app is not None) is webhook
    assert (coherence.fanout is not None) is redis
    assert (coherence.poller.interval if coherence.poller is not None else None) == poll


def test_the_invalidate_commands_parse_as_written() -> None:
    blocks = re.findall(r"^```(\w+)\n(.*?)^```", PAGE, flags=re.M | re.S)
    (commands,) = [body for language, body in blocks if language == "sh"]
    parser = _parser()
    for line in commands.splitlines():
        words = shlex.split(line, comments=True)
        assert words[0] == "prompt-middleware"
        args = parser.parse_args(words[1:])
        assert args.command == "invalidate"
        assert args.config == "gateway.yaml" or args.redis_url == "$REDIS_URL"
