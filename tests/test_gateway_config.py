"""The gateway's config file: DESIGN §9's format, LiteLLM's config.yaml, flags, and every error."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from prompt_middleware.gateway.app import GatewayApp, build_app
from prompt_middleware.gateway.cli import _parser, describe, main
from prompt_middleware.gateway.config import (
    ConfigError,
    GatewayConfig,
    LangfuseSettings,
    RegistryConfig,
    UpstreamConfig,
    load_config,
)
from prompt_middleware.registries.cache import CachedRegistry
from prompt_middleware.registries.langfuse import LangfuseRegistry

from .gateway_process import ROOT, gateway_env, run_cli, serving

PROMPTS = ROOT / "examples" / "prompts"

# DESIGN §9's example, every section.
FULL = """\
registry:
  files: prompts/
  fallback_files: backup/
  preload: [support/triage]
cache: {ttl: 60, max_stale: 3600, negative_ttl: 5, redis_url: null, poll_interval: null}
rewrite: {client_messages: replace, text_role: user, strict_variables: false}
upstreams:
  openai: {base_url: https://api.openai.com/v1, api_key: os.environ/OPENAI_API_KEY}
models:
  my-langfuse-model: {model: gpt-4o-mini, upstream: openai, prompt_id: support/triage,
                      prompt_label: production}
  openai-model: {model: gpt-3.5-turbo}
auth: {keys: [os.environ/GATEWAY_KEY]}
webhooks: {langfuse: {path: /webhooks/langfuse, secrets: [os.environ/LANGFUSE_WEBHOOK_SECRET],
                      tolerance: 300}}
metrics: {path: /metrics, prompt_labels: false}
tracing: {otlp_endpoint: null, headers: {}}
experiments: {support/triage: {labels: {production: 90, candidate: 10}, sticky: user}}
server: {host: 127.0.0.1, port: 4000, workers: 1}
"""

SECRETS = {
    "OPENAI_API_KEY": "sk-openai-secret",
    "GATEWAY_KEY": "sk-gateway-secret",
    "LANGFUSE_WEBHOOK_SECRET": "lf-whsec_secret",
}


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "prompts").mkdir()
    (tmp_path / "backup").mkdir()
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    for name in (
        "UPSTREAM_API_KEY",
        "LANGFUSE_PUBLIC_KEY",
        "LANGFUSE_SECRET_KEY",
        "LANGFUSE_BASE_URL",
        "LANGFUSE_HOST",
        "NOPE_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _write(folder: Path, text: str, name: str = "gateway.yaml") -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def test_design_example_parses(folder: Path) -> None:
    config = load_config(_write(folder, FULL))
    assert config.registry.files == (folder / "prompts").resolve()
    assert config.registry.preload == ("support/triage",)
    assert config.cache.max_stale == 3600
    assert [u.name for u in config.upstreams] == ["openai"]
    assert config.upstreams[0].api_key == "sk-openai-secret"
    alias, plain = config.models
    assert (alias.alias, alias.model, alias.prompt_id, alias.prompt_label) == (
        "my-langfuse-model",
        "gpt-4o-mini",
        "support/triage",
        "production",
    )
    assert (plain.model, plain.upstream, plain.prompt_id) == ("gpt-3.5-turbo", "openai", None)
    assert config.auth.keys == ("sk-gateway-secret",)
    assert config.webhooks is not None
    assert config.webhooks.langfuse is not None
    assert config.webhooks.langfuse.secrets == ("lf-whsec_secret",)
    assert config.experiments["support/triage"].labels == {"production": 90, "candidate": 10}
    assert config.experiments["support/triage"].sticky == "user"
    assert config.metrics is not None
    assert config.metrics.path == "/metrics"
    assert config.tracing is not None
    # Secrets never in a repr.
    for secret in SECRETS.values():
        assert secret not in repr(config)
    build_app(config)


def test_json_and_env_numbers(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_PORT", "4123")
    config = {
        "registry": {"files": "prompts"},
        "upstreams": {"local": {"base_url": "http://127.0.0.1:9/v1", "timeout": 12}},
        "server": {"port": "os.environ/GW_PORT", "workers": 2},
    }
    loaded = load_config(_write(folder, json.dumps(config), "gateway.json"))
    assert loaded.server.port == 4123
    assert loaded.server.workers == 2
    assert loaded.upstreams[0].timeout.read == 12


def test_flags_override_the_file(folder: Path) -> None:
    path = _write(folder, FULL)
    config = load_config(
        path,
        {
            "upstream": "echo",
            "prompts": str(PROMPTS),
            "port": 5001,
            "cache_ttl": 0.0,
            "text_role": "system",
            "strict_variables": True,
            "read_timeout": 0.0,
            "log_format": "json",
        },
    )
    assert config.server.log_format == "json"
    assert config.upstreams[0].name == "openai"  # aliases still point at it
    assert config.upstreams[0].base_url == "echo"
    assert config.upstreams[0].api_key is None  # never sent to where the flag points
    assert config.upstreams[0].timeout.read is None
    assert config.registry.files == PROMPTS
    assert (config.server.port, config.cache.ttl) == (5001, 0.0)
    assert (config.rewrite.text_role, config.rewrite.strict_variables) == ("system", True)


def test_flags_alone() -> None:
    config = load_config(None, {"upstream": "https://api.example.com/v1", "langfuse": True})
    assert config.upstreams[0].base_url == "https://api.example.com/v1"
    assert config.registry.langfuse is not None
    with pytest.raises(ConfigError, match="--upstream"):
        load_config(None, {"prompts": str(PROMPTS)})


LITELLM = """\
model_list:
  - model_name: my-langfuse-model
    litellm_params:
      model: langfuse/openai-model
      prompt_id: "support/triage"
      api_key: os.environ/OPENAI_API_KEY
  - model_name: openai-model
    litellm_params:
      model: openai/gpt-3.5-turbo
      api_key: os.environ/OPENAI_API_KEY
      api_base: http://127.0.0.1:9/v1/
  - model_name: local
    litellm_params: {model: llama3, api_base: http://127.0.0.1:8/v1, prompt_version: 2,
                     prompt_id: summarize, timeout: 30}
    model_info: {description: ignored}
general_settings:
  master_key: os.environ/MASTER
environment_variables:
  MASTER: sk-1234
  LANGFUSE_PUBLIC_KEY: pk-lf-file
  LANGFUSE_SECRET_KEY: sk-lf-file
  LANGFUSE_HOST: http://127.0.0.1:7
"""


def test_litellm_config(folder: Path) -> None:
    config = load_config(_write(folder, LITELLM))
    models = {m.alias: m for m in config.models}
    chained = models["my-langfuse-model"]
    assert (chained.model, chained.prompt_id) == ("gpt-3.5-turbo", "support/triage")
    # langfuse/openai-model resolves through that entry, its api_base included.
    assert config.upstream(chained.upstream).base_url == "http://127.0.0.1:9/v1"
    assert models["openai-model"].upstream == chained.upstream
    local = models["local"]
    assert (local.model, local.prompt_version) == ("llama3", 2)
    assert config.upstream(local.upstream).timeout.read == 30
    assert config.upstream(local.upstream).api_key is None
    assert config.auth.keys == ("sk-1234",)
    langfuse = config.registry.langfuse
    assert langfuse is not None
    assert (langfuse.public_key, langfuse.host) == ("pk-lf-file", "http://127.0.0.1:7")
    default = load_config(
        _write(folder, LITELLM.replace("      api_base: http://127.0.0.1:9/v1/\n", ""))
    )
    assert default.upstreams[0].base_url == "https://api.openai.com/v1"


def test_shipped_litellm_example_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf")
    config = load_config(str(ROOT / "examples" / "litellm_config.yaml"))
    assert [(m.alias, m.model, m.prompt_id) for m in config.models] == [
        ("my-langfuse-model", "gpt-3.5-turbo", "<langfuse_prompt_id>"),
        ("openai-model", "gpt-3.5-turbo", None),
    ]


def test_open_relay_refused_unless_anonymous_is_said(folder: Path) -> None:
    relay = (
        "registry: {files: prompts}\n"
        "upstreams: {openai: {base_url: 'https://api.openai.com/v1', api_key: sk-up}}\n"
        "server: {host: 0.0.0.0}\n"
    )
    with pytest.raises(ConfigError, match="anyone who reaches it would spend that key"):
        load_config(_write(folder, relay))
    with pytest.raises(ConfigError, match=r"auth\.keys"):
        load_config(_write(folder, relay.replace("0.0.0.0", "127.0.0.1")), {"host": "::"})
    load_config(_write(folder, relay + "auth: {keys: [], allow_anonymous: true}\n"))
    load_config(_write(folder, relay.replace("0.0.0.0", "localhost")))


ERRORS = [
    ("registy: {files: prompts}\n", "gateway.yaml: top level: unknown key 'registy'"),
    ("cache: {ttl: 1, tll: 2}\n", "cache: unknown key 'tll'"),
    ("auth: {keys: [os.environ/NOPE_KEY]}\n", "auth.keys[0]: environment variable NOPE_KEY"),
    ("registry: {files: nowhere}\n", "registry.files: expected a directory of prompt files"),
    ("server: {port: abc}\n", "server.port: expected an integer from 0 to 65535, got 'abc'"),
    ("server: {workers: 0}\n", "server.workers: expected an integer of at least 1"),
    ("cache: {ttl: -1}\n", "cache.ttl: expected a number at least 0"),
    ("rewrite: {text_role: bot}\n", "rewrite.text_role: expected one of user, system"),
    ("rewrite: {strict_variables: maybe}\n", "rewrite.strict_variables: expected true or false"),
    ("auth: {keys: sk-one}\n", "auth.keys: expected a list of strings, got str"),
    ("auth: {keys: [12345]}\n", "auth.keys[0]: expected a non-empty string, got int"),
    ("upstreams: [a]\n", "upstreams: expected a mapping, got a list"),
    ("upstreams: {a: {base_url: 'localhost:8000'}}\n", "upstreams.a.base_url: expected an abs"),
    ("upstreams: {a: {base_url: echo, api_key: 42}}\n", "upstreams.a.api_key: expected a non"),
    ("models: {x: {upstream: nope}}\n", "models.x.upstream: expected one of the upstreams"),
    ("models: {x: {prompt_label: l}}\n", "models.x.prompt_id: expected a prompt_id"),
    ("auth: {keys: [a], allow_anonymous: true}\n", "auth.allow_anonymous: expected false"),
    ("registry: {files: prompts, langfuse: {}}\n", "registry: expected one of files, langfuse"),
    ("webhooks: {langfuse: {path: /h}}\n", "webhooks.langfuse.secrets: expected at least one"),
    ("metrics: {path: metrics}\n", "metrics.path: expected a path starting with /"),
    ("experiments: {p: {labels: {}}}\n", "experiments.p.labels: expected labels with weights"),
    (
        "experiments: {p: {labels: {a: 1}, sticky: cookie}}\n",
        "experiments.p.sticky: expected one of user, header, got 'cookie'",
    ),
    ("server: {log_format: xml}\n", "server.log_format: expected one of text, json"),
    ("metrics: {path: /health}\n", "metrics.path: /health is already the health check's"),
    ("cache: {redis_url: 'http://x'}\n", "cache.redis_url: expected a redis:// or rediss://"),
    ("cache: {ttl: 1}\ncache: {ttl: 2}\n", "gateway.yaml: line 4: key 'cache' is repeated"),
    ("server: {port: [\n", "gateway.yaml: invalid YAML at line 4"),
    ("server: {body_timeout: 0}\n", "server.body_timeout: expected a number above 0, got 0"),
    ("server: {body_timeout: soon}\n", "server.body_timeout: expected a number above 0"),
    ("server: {gc_threshold: -1}\n", "server.gc_threshold: expected an integer of at least 0"),
    ("cache: {negative_max_size: 0}\n", "cache.negative_max_size: expected an integer of at"),
    ("cache: {negative_max_size: 2.5}\n", "cache.negative_max_size: expected an integer"),
    (
        "registry: {langfuse: {max_response_size: 0}}\n",
        "registry.langfuse.max_response_size: expected an integer of at least 1, got 0",
    ),
    (
        "registry: {langfuse: {max_connections: many}}\n",
        "registry.langfuse.max_connections: expected an integer of at least 1, got 'many'",
    ),
    ("registry: {langfuse: {timeout: 0}}\n", "registry.langfuse.timeout: expected a number abo"),
    ("registry: {langfuse: {max_conections: 5}}\n", "langfuse: unknown key 'max_conections'"),
    (
        "registry: {langfuse: {host: 'https://pk:hunter2@lf.example'}}\n",
        "registry.langfuse.host: expected a URL without credentials (they go in public_key and "
        "secret_key), got 'https://***@lf.example'",
    ),
    (
        "registry: {langfuse: {host: 'https://pk:hunter2@lf.example?x=1'}}\n",
        "registry.langfuse.host: expected an absolute http(s) URL, got 'https://***@lf.example?",
    ),
    ("- a\n", "expected a mapping of sections at the top level"),
]


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_config_errors_are_one_line(
    text: str, message: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = "registry: {files: prompts}\nupstreams: {a: {base_url: echo}}\n"
    first = text.split(":", 1)[0]
    if first in ("registry", "upstreams") or text.startswith(("registy", "- a")):
        base = "upstreams: {a: {base_url: echo}}\n" if first == "registry" else ""
        if first == "upstreams" or text.startswith("registy"):
            base = "registry: {files: prompts}\n"
    path = _write(folder, base + text)
    assert main(["serve", "--config", path]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("prompt-middleware: error: ")
    assert message in err
    assert "42" not in err
    assert "12345" not in err
    assert "hunter2" not in err


LITELLM_ERRORS = [
    (
        "model_list:\n  - model_name: claude\n    litellm_params: {model: anthropic/claude-3}\n"
        "  - model_name: az\n    litellm_params: {model: azure/gpt-4o, api_base: 'https://x'}\n",
        "model_list: cannot forward 'claude' (provider anthropic/), 'az' (provider azure/): the "
        "gateway speaks OpenAI's API only",
    ),
    (
        "model_list:\n  - model_name: a\n    litellm_params: {model: gpt-4o}\n"
        "  - model_name: a\n    litellm_params: {model: gpt-4o-mini}\n",
        "model_list[1]: model_name 'a' is listed twice",
    ),
    (
        "model_list:\n  - model_name: a\n    litellm_params: {model: langfuse/b}\n"
        "  - model_name: b\n    litellm_params: {model: langfuse/a}\n",
        "refers back to itself",
    ),
    (
        "model_list: []\nlitellm_settings: {callbacks: [langfuse]}\n",
        "litellm_settings: unknown key 'callbacks'",
    ),
    (
        "model_list:\n  - model_name: a\n    litellm_params: {model: gpt-4o, rpm: 10}\n",
        "model_list[0].litellm_params: unknown key 'rpm'",
    ),
    ("model_list: []\n", "environment_variables: expected LANGFUSE_PUBLIC_KEY"),
]


@pytest.mark.parametrize(("text", "message"), LITELLM_ERRORS)
def test_litellm_errors(
    text: str, message: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if "LANGFUSE" not in message:
        text += "environment_variables: {LANGFUSE_PUBLIC_KEY: pk, LANGFUSE_SECRET_KEY: sk}\n"
    assert main(["serve", "--config", _write(folder, text)]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert message in err
    if "cannot forward" in message:
        assert "run LiteLLM behind the gateway" in err


BASE = "registry: {files: prompts}\nupstreams: {a: {base_url: echo}}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BASE + "auht: {}\n", "unknown key 'auht'"),
        (
            "registry: {files: prompts}\n"
            "upstreams: {a: {base_url: echo, api_key: os.environ/NOPE_KEY}}\n",
            "upstreams.a.api_key: environment variable NOPE_KEY is not set",
        ),
        (BASE.replace("prompts", "missing"), "registry.files: expected a directory"),
        (BASE + "server: {port: high}\n", "server.port: expected an integer"),
        (
            "registry: {files: prompts}\nupstreams: {a: {base_url: echo, api_key: sk-x}}\n"
            "server: {host: 0.0.0.0}\n",
            "auth.keys: expected client keys",
        ),
    ],
)
def test_real_cli_config_errors(text: str, message: str, folder: Path) -> None:
    """The installed command, as an operator runs it: exit 1, one line, no traceback."""
    result = run_cli("serve", "--config", _write(folder, text), env=gateway_env())
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    assert "gateway.yaml" in result.stderr
    assert "sk-x" not in result.stderr


def _doc_blocks(kind: str) -> list[str]:
    text = (ROOT / "docs" / "gateway.md").read_text()
    return re.findall(rf"```{kind}\n(.*?)```", text, flags=re.DOTALL)


def test_docs_configs_load(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/gateway.md's minimal config, with its observability sections, loads; its LiteLLM
    example is the shipped one."""
    minimal, observing, litellm = _doc_blocks("yaml")
    monkeypatch.setenv("LANGFUSE_OTLP_AUTH", "Basic x")
    config = load_config(_write(folder, minimal + observing))
    assert config.models[0].alias == "support-bot"
    assert config.server.workers == 2
    assert config.metrics is not None
    assert config.tracing is not None
    assert config.tracing.headers == {"Authorization": "Basic x"}
    assert config.experiments["support/triage"].labels == {"production": 90, "candidate": 10}
    shipped = (ROOT / "examples" / "litellm_config.yaml").read_text()
    assert litellm in shipped


def test_docs_commands_parse() -> None:
    commands = [
        shlex.split(line, comments=True)[1:]
        for block in _doc_blocks("sh")
        for line in block.splitlines()
        if line.startswith("prompt-middleware ")
    ]
    commands += [
        shlex.split(line.split("=", 1)[1])[1:]
        for block in _doc_blocks("ini")
        for line in block.splitlines()
        if line.startswith("ExecStart=")
    ]
    assert len(commands) == 4
    for args in commands:
        assert _parser().parse_args(args).command == "serve"


BOUNDS = """\
registry:
  langfuse: {host: 'http://127.0.0.1:9', public_key: pk-lf, secret_key: sk-lf, timeout: 2.5,
             max_response_size: 65536, max_connections: 3}
cache: {max_size: 64, negative_max_size: 7}
upstreams: {a: {base_url: echo}}
server: {max_body_size: 4096, body_timeout: 0.3}
"""


def _langfuse(app: GatewayApp) -> LangfuseRegistry:
    cache = app.middleware.registry
    assert isinstance(cache, CachedRegistry)
    registry = cache.registry
    assert isinstance(registry, LangfuseRegistry)
    return registry


def test_bounds_reach_the_built_app(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The file's host wins over the environment's, as the registry table says.
    monkeypatch.setenv("LANGFUSE_BASE_URL", "http://127.0.0.1:8")
    app = build_app(load_config(_write(folder, BOUNDS)))
    assert app.middleware.body_timeout == 0.3
    assert app.middleware.max_body_size == 4096
    cache = app.middleware.registry
    assert isinstance(cache, CachedRegistry)
    assert cache._negatives.maxsize == 7
    assert cache._entries.maxsize == 64
    langfuse = _langfuse(app)
    assert langfuse.base_url == "http://127.0.0.1:9"
    assert (langfuse._timeout, langfuse._max_response_size, langfuse._max_connections) == (
        2.5,
        65536,
        3,
    )


def test_bounds_default_to_the_librarys(folder: Path) -> None:
    text = (
        "registry: {langfuse: {public_key: pk, secret_key: sk}}\nupstreams: {a: {base_url: echo}}\n"
    )
    app = build_app(load_config(_write(folder, text)))
    assert app.middleware.body_timeout == 30.0
    cache = app.middleware.registry
    assert isinstance(cache, CachedRegistry)
    assert cache._negatives.maxsize == 1024 // 8
    langfuse = _langfuse(app)
    assert (langfuse._timeout, langfuse._max_response_size, langfuse._max_connections) == (
        5.0,
        5 * 2**20,
        100,
    )
    # --langfuse keeps the file's Langfuse settings, bounds included.
    config = load_config(_write(folder, BOUNDS), {"langfuse": True})
    assert config.registry.langfuse is not None
    assert config.registry.langfuse.max_connections == 3


# A credential in a URL: never in the startup line, a repr or an error.
PASSWORD = "hunter2"


def test_urls_with_userinfo_are_masked(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANGFUSE_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("LANGFUSE_HOST", f"https://pk:{PASSWORD}@lf.example")  # unused: BASE_URL
    text = (
        "registry: {langfuse: {public_key: pk, secret_key: sk}}\n"
        f"upstreams: {{a: {{base_url: 'https://user:{PASSWORD}@api.example.com/v1'}}}}\n"
        f"tracing: {{otlp_endpoint: 'https://user:{PASSWORD}@otel.example/v1/traces'}}\n"
    )
    config = load_config(_write(folder, text))
    app = build_app(config)
    line = describe(config)
    assert "Langfuse at http://127.0.0.1:9" in line  # the URL the registry uses
    assert "api.example.com/v1" in line
    for shown in (line, repr(config), repr(app.middleware.registry), repr(app.router.upstreams)):
        assert PASSWORD not in shown
    assert "https://***@api.example.com/v1" in repr(config)
    # Should a Langfuse URL with userinfo reach it (the registry refuses one), it is masked.
    built = GatewayConfig(
        source="x",
        registry=RegistryConfig(langfuse=LangfuseSettings(f"https://pk:{PASSWORD}@lf.example")),
        upstreams=(UpstreamConfig("a", f"https://u:{PASSWORD}@api.example.com"),),
    )
    assert PASSWORD not in describe(built)
    assert "Langfuse at https://***@lf.example" in describe(built)
    assert PASSWORD not in repr(built)


def test_real_cli_startup_line_masks_userinfo(folder: Path) -> None:
    text = (
        "registry: {langfuse: {public_key: pk, secret_key: sk}}\n"
        f"upstreams: {{a: {{base_url: 'http://user:{PASSWORD}@127.0.0.1:9/v1'}}}}\n"
    )
    env = gateway_env(
        LANGFUSE_BASE_URL="http://127.0.0.1:9",
        LANGFUSE_HOST=f"https://pk:{PASSWORD}@lf.example",
    )
    with serving("--config", _write(folder, text), env=env) as gateway:
        pass
    startup = [line for line in gateway.log if "listening on" in line]
    assert len(startup) == 1, gateway.log
    assert "Langfuse at http://127.0.0.1:9" in startup[0]
    assert "http://127.0.0.1:9/v1" in startup[0]
    assert PASSWORD not in "\n".join(gateway.log)


_COLLECTOR = """
import gc, json, sys
import anyio
from prompt_middleware.gateway.app import build_app
from prompt_middleware.gateway.config import load_config
from prompt_middleware.testing import asgi_client

async def main() -> None:
    app = build_app(load_config(sys.argv[1]), own_process=sys.argv[2] == "own")
    before, frozen_before = gc.get_threshold()[0], gc.get_freeze_count()
    async with asgi_client(app):
        pass
    print(json.dumps([before, gc.get_threshold()[0], gc.get_freeze_count() > frozen_before]))

anyio.run(main)
"""


@pytest.mark.parametrize(
    ("server", "process", "expected"),
    [
        ("{}", "own", (10_000, True)),
        ("{gc_threshold: 50000}", "own", (50_000, True)),
        ("{gc_threshold: 0}", "own", (None, False)),
        ("{}", "embedded", (None, False)),
    ],
)
def test_the_collector_is_set_once_a_gateway_that_owns_its_process_has_started(
    folder: Path, server: str, process: str, expected: tuple[int | None, bool]
) -> None:
    """`serve` (own_process) freezes what startup built and spaces out young collections;
    a gateway built into another program leaves that program's collector alone. Run in a
    child process, whose collector the test can look at without changing its own."""
    (folder / "none").mkdir()
    text = f"registry: {{files: {folder / 'none'}}}\nupstreams: {{a: {{base_url: echo}}}}\n"
    config = _write(folder, f"{text}server: {server}\n")
    result = subprocess.run(
        [sys.executable, "-c", _COLLECTOR, str(config), process],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    before, after, frozen = json.loads(result.stdout)  # before: Python's own (700; 3.13: 2,000)
    threshold, freezes = expected
    assert (after, frozen) == (before if threshold is None else threshold, freezes)
