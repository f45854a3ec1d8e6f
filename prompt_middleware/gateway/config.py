"""The gateway's configuration: one YAML or JSON file, LiteLLM's `config.yaml`, and flags.

`load_config(path, overrides)` reads the file (or none), applies the command line's overrides
and returns a frozen `GatewayConfig`; anything wrong is a `ConfigError` whose message is one line
naming the file, the key and what was expected. Values written `os.environ/NAME` are read from the
environment (a LiteLLM file's `environment_variables` first); a missing or empty one is an error.
Relative paths in a file are relative to the file's folder.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import httpx

from ..middleware import DEFAULT_BODY_TIMEOUT
from ..registries.cache import DEFAULT_MAX_STALE
from ..registries.langfuse import DEFAULT_MAX_RESPONSE_SIZE
from ._target import without_userinfo

__all__ = [
    "AuthConfig",
    "CacheConfig",
    "ConfigError",
    "ExperimentConfig",
    "GatewayConfig",
    "LangfuseSettings",
    "LangfuseWebhookConfig",
    "MetricsConfig",
    "ModelConfig",
    "RegistryConfig",
    "RewriteConfig",
    "ServerConfig",
    "TimeoutConfig",
    "TracingConfig",
    "UpstreamConfig",
    "WebhooksConfig",
    "is_loopback",
    "load_config",
    "load_redis_url",
]

ENV_PREFIX: Final = "os.environ/"
ECHO: Final = "echo"
OPENAI_BASE_URL: Final = "https://api.openai.com/v1"
DEFAULT_UPSTREAM: Final = "default"
LOG_LEVELS: Final = ("critical", "error", "warning", "info", "debug")
LOG_FORMATS: Final = ("text", "json")

_LITELLM_KEYS: Final = frozenset(
    {"model_list", "general_settings", "litellm_settings", "environment_variables"}
)
_LITELLM_PREFIX: Final = "langfuse/"
_LITELLM_OPENAI: Final = "openai/"

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration problem, as one line for the operator."""


# The sections

_URL: Final = {"url": True}  # field metadata: a URL whose userinfo the repr masks


def _masked_repr(self: Any) -> str:
    """A dataclass repr with the userinfo (a credential) of `_URL` fields masked."""
    shown = []
    for f in fields(self):
        if f.repr:
            value = getattr(self, f.name)
            if f.metadata.get("url") and isinstance(value, str):
                value = without_userinfo(value)
            shown.append(f"{f.name}={value!r}")
    return f"{type(self).__name__}({', '.join(shown)})"


@dataclass(frozen=True, repr=False)
class LangfuseSettings:
    """Langfuse credentials, host and bounds; None: read as the Langfuse SDK does (LANGFUSE_*)."""

    host: str | None = field(default=None, metadata=_URL)
    public_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    timeout: float = 5.0  # each attempt
    max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE
    max_connections: int = 100

    __repr__ = _masked_repr


@dataclass(frozen=True)
class RegistryConfig:
    files: Path | None = None
    langfuse: LangfuseSettings | None = None
    fallback_files: Path | None = None
    preload: tuple[str, ...] = ()
    watch: bool = True  # with `files`: reload changed files at once


@dataclass(frozen=True)
class CacheConfig:
    ttl: float = 60.0
    max_stale: float | None = DEFAULT_MAX_STALE
    negative_ttl: float = 5.0
    max_size: int = 1024
    negative_max_size: int | None = None  # None: max_size // 8
    fetch_timeout: float | None = 10.0
    redis_url: str | None = field(default=None, repr=False)  # may carry a password
    poll_interval: float | None = None


@dataclass(frozen=True)
class RewriteConfig:
    client_messages: Literal["replace", "append"] = "replace"
    text_role: str = "user"
    strict_variables: bool = False


@dataclass(frozen=True)
class TimeoutConfig:
    connect: float | None = 10.0
    read: float | None = 600.0
    write: float | None = 30.0
    pool: float | None = 5.0


@dataclass(frozen=True, repr=False)
class UpstreamConfig:
    name: str
    # or "echo": the built-in upstream that answers with the request
    base_url: str = field(metadata=_URL)
    api_key: str | None = field(default=None, repr=False)
    timeout: TimeoutConfig = TimeoutConfig()
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    __repr__ = _masked_repr


@dataclass(frozen=True)
class ModelConfig:
    """A model alias: requests naming `alias` get `model`, go to `upstream`, maybe a prompt."""

    alias: str
    model: str
    upstream: str
    prompt_id: str | None = None
    prompt_version: int | None = None
    prompt_label: str | None = None


@dataclass(frozen=True)
class AuthConfig:
    keys: tuple[str, ...] = field(default=(), repr=False)
    allow_anonymous: bool = False


@dataclass(frozen=True)
class LangfuseWebhookConfig:
    path: str = "/webhooks/langfuse"
    secrets: tuple[str, ...] = field(default=(), repr=False)
    tolerance: float = 300.0


@dataclass(frozen=True)
class WebhooksConfig:
    langfuse: LangfuseWebhookConfig | None = None


@dataclass(frozen=True)
class MetricsConfig:
    path: str = "/metrics"
    prompt_labels: bool = False


@dataclass(frozen=True, repr=False)
class TracingConfig:
    otlp_endpoint: str | None = field(default=None, metadata=_URL)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    __repr__ = _masked_repr


@dataclass(frozen=True)
class ExperimentConfig:
    """A weighted label rollout of one prompt (`prompt_middleware.core.experiments`)."""

    labels: Mapping[str, float]
    sticky: Literal["user", "header"] = "user"


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 4000
    workers: int = 1
    graceful_timeout: float = 30.0
    log_level: str = "info"
    log_format: Literal["text", "json"] = "text"
    max_body_size: int = 10 * 2**20
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    gc_threshold: int = 10_000


@dataclass(frozen=True)
class GatewayConfig:
    """Everything `prompt-middleware serve` runs with. `upstreams[0]` is the default upstream."""

    source: str  # the file, or "the command line"
    registry: RegistryConfig
    upstreams: tuple[UpstreamConfig, ...]
    cache: CacheConfig = CacheConfig()
    rewrite: RewriteConfig = RewriteConfig()
    models: tuple[ModelConfig, ...] = ()
    auth: AuthConfig = AuthConfig()
    webhooks: WebhooksConfig | None = None
    metrics: MetricsConfig | None = None
    tracing: TracingConfig | None = None
    experiments: Mapping[str, ExperimentConfig] = field(default_factory=dict)
    server: ServerConfig = ServerConfig()

    def upstream(self, name: str) -> UpstreamConfig:
        return next(u for u in self.upstreams if u.name == name)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# Loading


def load_config(path: str | None, overrides: Mapping[str, Any] | None = None) -> GatewayConfig:
    """The configuration in `path` (YAML or JSON; None: flags only), with `overrides` applied.

    `overrides` holds command-line values by option name (`upstream`, `prompts`, `langfuse`,
    `host`, `port`, `cache_ttl`, ...); absent or None means not given.
    """
    given = {k: v for k, v in (overrides or {}).items() if v is not None and v is not False}
    if path is None:
        config = _from_flags(given)
    else:
        file = Path(path)
        data = _read_file(file)
        context = _Context(str(path), file.resolve().parent, data.get("environment_variables"))
        config = (
            _from_litellm(data, context, given)
            if _LITELLM_KEYS & set(data)
            else _parse(data, context)
        )
    config = _apply(config, given)
    _check(config)
    return config


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"{path}: cannot read the config file ({reason})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{path}: invalid JSON ({exc})") from None
    else:
        data = _load_yaml(path, text)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def _load_yaml(path: Path, text: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise ConfigError(
            f"{path}: YAML needs PyYAML: pip install 'prompt-middleware[server]' (or use .json)"
        ) from None

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node)
            if key in seen:  # PyYAML would keep the last one without a word
                mark = key_node.start_mark
                raise ConfigError(f"{path}: line {mark.line + 1}: key {key!r} is repeated")
            seen.add(key)
        return loader.construct_mapping(node)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        return yaml.load(text, Loader=Loader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({type(exc).__name__})") from None


class _Context:
    """The file being read: its name for errors, its folder for paths, its variables."""

    def __init__(self, file: str, folder: Path, variables: Any) -> None:
        self.file = file
        self.folder = folder
        self.variables: dict[str, str] = {}
        if variables is not None:
            if not isinstance(variables, dict) or not all(
                isinstance(k, str) and isinstance(v, str | int | float)
                for k, v in variables.items()
            ):
                raise self.error("environment_variables", "expected a mapping of names to strings")
            self.variables = {k: str(v) for k, v in variables.items()}

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.file}: {key}: {message}")

    def env(self, name: str) -> str | None:
        return self.variables.get(name) or os.environ.get(name) or None

    def path(self, value: str) -> Path:
        return (self.folder / os.path.expanduser(value)).resolve()


class _Section:
    """One mapping of the file: typed getters; `done()` refuses the keys nobody read."""

    def __init__(self, context: _Context, key: str, data: Any) -> None:
        self.context = context
        self.key = key
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise context.error(key, f"expected a mapping, got {_kind(data)}")
        self.data: dict[str, Any] = data
        self.read: set[str] = set()

    def where(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def error(self, name: str, message: str) -> ConfigError:
        return self.context.error(self.where(name), message)

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def raw(self, name: str) -> Any:
        self.read.add(name)
        return self.resolve(self.where(name), self.data.get(name))

    def resolve(self, where: str, value: Any) -> Any:
        if isinstance(value, str) and value.startswith(ENV_PREFIX):
            name = value[len(ENV_PREFIX) :]
            found = self.context.env(name)
            if found is None:
                raise self.context.error(where, f"environment variable {name} is not set")
            return found
        return value

    def section(self, name: str) -> _Section:
        self.read.add(name)
        return _Section(self.context, self.where(name), self.data.get(name))

    def string(self, name: str, default: T, *, secret: bool = False) -> str | T:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            raise self.error(name, f"expected a non-empty string, got {_shown(value, secret)}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.string(name, default)
        if value not in choices:
            raise self.error(name, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def number(self, name: str, default: T, *, low: float = 0.0, strict: bool = False) -> float | T:
        value = self.raw(name)
        if value is None:
            return default
        number = _as_number(value)
        if (
            number is None
            or not math.isfinite(number)
            or number < low
            or (strict and number == low)
        ):
            bound = f"above {low:g}" if strict else f"at least {low:g}"
            raise self.error(name, f"expected a number {bound}, got {_shown(value)}")
        return number

    def integer(self, name: str, default: int, low: int, high: int | None = None) -> int:
        value = self.raw(name)
        if value is None:
            return default
        number = _as_number(value)
        if number is None or number != int(number) or number < low or (high and number > high):
            span = f"from {low} to {high}" if high else f"of at least {low}"
            raise self.error(name, f"expected an integer {span}, got {_shown(value)}")
        return int(number)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise self.error(name, f"expected true or false, got {_shown(value)}")
        return value

    def strings(self, name: str, *, secret: bool = False) -> tuple[str, ...]:
        value = self.data.get(name)
        self.read.add(name)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.error(name, f"expected a list of strings, got {_kind(value)}")
        out = []
        for index, raw in enumerate(value):
            where = f"{self.where(name)}[{index}]"
            item = self.resolve(where, raw)
            if not isinstance(item, str) or not item:
                raise self.context.error(
                    where, f"expected a non-empty string, got {_shown(item, secret)}"
                )
            out.append(item)
        return tuple(out)

    def string_map(self, name: str) -> dict[str, str]:
        section = self.section(name)
        return {key: section.string(key, "", secret=True) for key in section.names()}

    def names(self) -> list[str]:
        for key in self.data:
            if not isinstance(key, str):
                raise self.context.error(self.key or "top level", f"key {key!r} is not a string")
        self.read.update(self.data)
        return list(self.data)

    def done(self, hint: str = "") -> None:
        unknown = [k for k in self.data if k not in self.read]
        if unknown:
            names = ", ".join(repr(k) for k in unknown)
            where = self.key or "top level"
            raise self.context.error(
                where, f"unknown key {names} (expected {', '.join(sorted(self.read))}){hint}"
            )


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", type(None): "nothing"}.get(
        type(value), type(value).__name__
    )


def _shown(value: Any, secret: bool = False) -> str:
    if secret or isinstance(value, dict | list):
        return _kind(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):  # from os.environ/
        try:
            return float(value)
        except ValueError:
            return None
    return None


# Our own format


_SECTIONS: Final = (
    "registry",
    "cache",
    "rewrite",
    "upstreams",
    "models",
    "auth",
    "webhooks",
    "metrics",
    "tracing",
    "experiments",
    "server",
)


def _parse(data: dict[str, Any], context: _Context) -> GatewayConfig:
    top = _Section(context, "", data)
    for name in _SECTIONS:
        top.read.add(name)
    top.done()
    upstreams = _upstreams(top.section("upstreams"))
    names = tuple(u.name for u in upstreams)
    return GatewayConfig(
        source=context.file,
        registry=_registry(top.section("registry")),
        upstreams=upstreams,
        cache=_cache(top.section("cache")),
        rewrite=_rewrite(top.section("rewrite")),
        models=_models(top.section("models"), names),
        auth=_auth(top.section("auth")),
        webhooks=_webhooks(top.section("webhooks")) if top.has("webhooks") else None,
        metrics=_metrics(top.section("metrics")) if top.has("metrics") else None,
        tracing=_tracing(top.section("tracing")) if top.has("tracing") else None,
        experiments=_experiments(top.section("experiments")),
        server=_server(top.section("server")),
    )


def _registry(s: _Section) -> RegistryConfig:
    files = s.string("files", None)
    langfuse = None
    if s.has("langfuse"):
        lf = s.section("langfuse")
        host = _url(lf, "host")
        if host is not None and httpx.URL(host).userinfo:
            raise lf.error(
                "host",
                f"expected a URL without credentials (they go in public_key and secret_key), "
                f"got {without_userinfo(host)!r}",
            )
        langfuse = LangfuseSettings(
            host=host,
            public_key=lf.string("public_key", None, secret=True),
            secret_key=lf.string("secret_key", None, secret=True),
            timeout=lf.number("timeout", 5.0, strict=True),
            max_response_size=lf.integer("max_response_size", DEFAULT_MAX_RESPONSE_SIZE, 1),
            max_connections=lf.integer("max_connections", 100, 1),
        )
        lf.done()
    else:
        s.read.add("langfuse")
    if files is not None and langfuse is not None:
        raise s.context.error(s.key, "expected one of files, langfuse, not both")
    fallback = s.string("fallback_files", None)
    config = RegistryConfig(
        files=_directory(s, "files", files),
        langfuse=langfuse,
        fallback_files=_directory(s, "fallback_files", fallback),
        preload=s.strings("preload"),
        watch=s.boolean("watch", True),
    )
    s.done()
    return config


def _directory(s: _Section, name: str, value: str | None) -> Path | None:
    if value is None:
        return None
    path = s.context.path(value)
    if not path.is_dir():
        raise s.error(name, f"expected a directory of prompt files; {str(path)!r} does not exist")
    return path


def _url(s: _Section, name: str) -> str | None:
    value = s.string(name, None)
    if value is not None and _bad_url(value):
        shown = without_userinfo(value)
        raise s.error(name, f"expected an absolute http(s) URL, got {shown!r}")
    return value


def _bad_url(value: str) -> bool:
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, ValueError):
        return True
    return url.scheme not in ("http", "https") or not url.host or bool(url.query or url.fragment)


def _cache(s: _Section) -> CacheConfig:
    config = CacheConfig(
        ttl=s.number("ttl", 60.0),
        max_stale=s.number("max_stale", DEFAULT_MAX_STALE),
        negative_ttl=s.number("negative_ttl", 5.0),
        max_size=s.integer("max_size", 1024, 1),
        negative_max_size=s.integer("negative_max_size", 0, 1) or None,
        fetch_timeout=s.number("fetch_timeout", 10.0, strict=True),
        redis_url=_redis_url(s),
        poll_interval=s.number("poll_interval", None, strict=True),
    )
    s.done()
    return config


def _redis_url(s: _Section) -> str | None:
    url = s.string("redis_url", None, secret=True)
    if url is not None and not url.startswith(("redis://", "rediss://")):
        raise s.error("redis_url", "expected a redis:// or rediss:// URL")
    return url


def load_redis_url(path: str) -> str | None:
    """`cache.redis_url` of the config in `path`, read and checked as `load_config` reads it,
    with nothing else in the file resolved: a job that only invalidates (a deploy step, an
    operator's shell) need not hold every secret the gateway reads."""
    file = Path(path)
    data = _read_file(file)
    context = _Context(path, file.resolve().parent, data.get("environment_variables"))
    return _redis_url(_Section(context, "", data).section("cache"))


def _rewrite(s: _Section) -> RewriteConfig:
    client_messages = s.choice("client_messages", ("replace", "append"), "replace")
    config = RewriteConfig(
        client_messages="append" if client_messages == "append" else "replace",
        text_role=s.choice("text_role", ("user", "system"), "user"),
        strict_variables=s.boolean("strict_variables", False),
    )
    s.done()
    return config


def _upstreams(s: _Section) -> tuple[UpstreamConfig, ...]:
    return tuple(_upstream(s.section(name), name) for name in s.names())


def _upstream(s: _Section, name: str) -> UpstreamConfig:
    base_url = s.string("base_url", "")
    if not base_url:
        raise s.error("base_url", "expected the upstream's base URL (or echo)")
    if base_url != ECHO and _bad_url(base_url):
        shown = without_userinfo(base_url)
        raise s.error("base_url", f"expected an absolute http(s) URL or echo, got {shown!r}")
    config = UpstreamConfig(
        name=name,
        base_url=base_url,
        api_key=s.string("api_key", None, secret=True),
        timeout=_timeout(s),
        headers=s.string_map("headers"),
    )
    s.done()
    return config


def _timeout(s: _Section) -> TimeoutConfig:
    value = s.data.get("timeout")
    if value is None or not isinstance(value, dict):  # a number: the read timeout
        read = s.number("timeout", 600.0)
        return TimeoutConfig(read=read or None)
    t = s.section("timeout")
    config = TimeoutConfig(
        **{
            part: (t.number(part, getattr(TimeoutConfig, part)) or None)
            for part in ("connect", "read", "write", "pool")
        }
    )
    t.done()
    return config


def _models(s: _Section, upstreams: tuple[str, ...]) -> tuple[ModelConfig, ...]:
    models = []
    for alias in s.names():
        m = s.section(alias)
        upstream = m.string("upstream", upstreams[0] if upstreams else DEFAULT_UPSTREAM)
        if upstreams and upstream not in upstreams:
            raise m.error("upstream", f"expected one of the upstreams {', '.join(upstreams)}")
        prompt_id = m.string("prompt_id", None)
        version = m.integer("prompt_version", 0, 1) or None
        label = m.string("prompt_label", None)
        if prompt_id is None and (version or label):
            raise m.error("prompt_id", "expected a prompt_id with prompt_version or prompt_label")
        if version and label:
            raise m.error("prompt_label", "expected prompt_version or prompt_label, not both")
        models.append(
            ModelConfig(alias, m.string("model", alias), upstream, prompt_id, version, label)
        )
        m.done()
    return tuple(models)


def _auth(s: _Section) -> AuthConfig:
    config = AuthConfig(
        keys=s.strings("keys", secret=True), allow_anonymous=s.boolean("allow_anonymous", False)
    )
    if config.keys and config.allow_anonymous:
        raise s.error("allow_anonymous", "expected false when keys are given (or no keys)")
    s.done()
    return config


def _webhooks(s: _Section) -> WebhooksConfig:
    langfuse = None
    if s.has("langfuse"):
        w = s.section("langfuse")
        langfuse = LangfuseWebhookConfig(
            path=_route(w, "path", "/webhooks/langfuse"),
            secrets=w.strings("secrets", secret=True),
            tolerance=w.number("tolerance", 300.0, strict=True),
        )
        if not langfuse.secrets:
            raise w.error("secrets", "expected at least one signing secret")
        w.done()
    else:
        s.read.add("langfuse")
    s.done()
    return WebhooksConfig(langfuse)


def _route(s: _Section, name: str, default: str) -> str:
    path = s.string(name, default)
    if not path.startswith("/"):
        raise s.error(name, f"expected a path starting with /, got {path!r}")
    return path


def _metrics(s: _Section) -> MetricsConfig:
    config = MetricsConfig(_route(s, "path", "/metrics"), s.boolean("prompt_labels", False))
    s.done()
    return config


def _tracing(s: _Section) -> TracingConfig:
    config = TracingConfig(_url(s, "otlp_endpoint"), s.string_map("headers"))
    s.done()
    return config


def _experiments(s: _Section) -> dict[str, ExperimentConfig]:
    out = {}
    for name in s.names():
        e = s.section(name)
        labels = e.section("labels")
        weights = {label: labels.number(label, 0.0) for label in labels.names()}
        if not weights or sum(weights.values()) <= 0:
            raise e.error("labels", "expected labels with weights adding up to more than 0")
        sticky = e.choice("sticky", ("user", "header"), "user")
        e.done()
        out[name] = ExperimentConfig(weights, "header" if sticky == "header" else "user")
    return out


def _server(s: _Section) -> ServerConfig:
    config = ServerConfig(
        host=s.string("host", "127.0.0.1"),
        port=s.integer("port", 4000, 0, 65535),
        workers=s.integer("workers", 1, 1),
        graceful_timeout=s.number("graceful_timeout", 30.0),
        log_level=s.choice("log_level", LOG_LEVELS, "info"),
        log_format="json" if s.choice("log_format", LOG_FORMATS, "text") == "json" else "text",
        max_body_size=s.integer("max_body_size", 10 * 2**20, 1),
        body_timeout=s.number("body_timeout", DEFAULT_BODY_TIMEOUT, strict=True),
        gc_threshold=s.integer("gc_threshold", 10_000, 0),
    )
    s.done()
    return config


# LiteLLM's config.yaml


@dataclass(frozen=True)
class _Deployment:
    name: str
    where: str
    model: str
    api_base: str | None
    api_key: str | None = field(repr=False)
    timeout: float | None
    prompt_id: str | None
    prompt_version: int | None
    prompt_label: str | None


def _from_litellm(
    data: dict[str, Any], context: _Context, given: Mapping[str, Any]
) -> GatewayConfig:
    hint = " (a LiteLLM config: see docs/gateway.md for what maps)"
    top = _Section(context, "", data)
    top.read.update(("model_list", "environment_variables"))
    settings = top.section("general_settings")
    master_key = settings.string("master_key", None, secret=True)
    settings.done(hint)
    top.section("litellm_settings").done(hint)
    top.done(hint)

    entries = data.get("model_list") or []
    if not isinstance(entries, list):
        raise context.error("model_list", f"expected a list of models, got {_kind(entries)}")
    deployments: dict[str, _Deployment] = {}
    for index, entry in enumerate(entries):
        deployment = _deployment(_Section(context, f"model_list[{index}]", entry), hint)
        if deployment.name in deployments:
            raise context.error(
                deployment.where,
                f"model_name {deployment.name!r} is listed twice: load balancing between "
                "deployments is not supported; run LiteLLM behind the gateway for it",
            )
        deployments[deployment.name] = deployment

    resolved = {name: _resolve(deployments, name, ()) for name in deployments}
    unforwardable = [f"{name!r} ({why})" for name, (_, why) in resolved.items() if why]
    if unforwardable:
        raise context.error(
            "model_list",
            f"cannot forward {', '.join(unforwardable)}: the gateway speaks OpenAI's API only "
            "(openai/ or no prefix, api_base for other servers); run LiteLLM behind the gateway "
            "for these and point an upstream at it",
        )

    upstreams: dict[tuple[str, str | None, float | None], UpstreamConfig] = {}
    models = []
    for name, ((model, base, key, timeout), _) in resolved.items():
        upstream = upstreams.get((base, key, timeout))
        if upstream is None:
            openai = base == OPENAI_BASE_URL and "openai" not in _names(upstreams)
            label = "openai" if openai else name
            upstream = UpstreamConfig(label, base, key, TimeoutConfig(read=timeout))
            upstreams[(base, key, timeout)] = upstream
        d = deployments[name]
        models.append(
            ModelConfig(name, model, upstream.name, d.prompt_id, d.prompt_version, d.prompt_label)
        )

    langfuse = None
    if not given.get("prompts") and not given.get("langfuse"):
        langfuse = _litellm_langfuse(context)
    return GatewayConfig(
        source=context.file,
        registry=RegistryConfig(langfuse=langfuse),
        upstreams=tuple(upstreams.values()),
        models=tuple(models),
        auth=AuthConfig(keys=(master_key,) if master_key else ()),
    )


def _names(upstreams: Mapping[Any, UpstreamConfig]) -> set[str]:
    return {u.name for u in upstreams.values()}


def _deployment(entry: _Section, hint: str) -> _Deployment:
    name = entry.string("model_name", "")
    if not name:
        raise entry.error("model_name", "expected the model name clients send")
    entry.read.add("model_info")  # descriptive only
    params = entry.section("litellm_params")
    model = params.string("model", "")
    if not model:
        raise params.error("model", "expected a model, e.g. openai/gpt-4o-mini")
    version = params.integer("prompt_version", 0, 1) or None
    deployment = _Deployment(
        name=name,
        where=entry.key,
        model=model,
        api_base=_url(params, "api_base"),
        api_key=params.string("api_key", None, secret=True),
        timeout=params.number("timeout", None, strict=True),
        prompt_id=params.string("prompt_id", None),
        prompt_version=version,
        prompt_label=params.string("prompt_label", None),
    )
    params.done(hint)
    entry.done(hint)
    return deployment


_Route = tuple[str, str, str | None, float | None]  # model, base URL, key, read timeout


def _resolve(
    deployments: Mapping[str, _Deployment], name: str, seen: tuple[str, ...]
) -> tuple[_Route, str]:
    """What `name` forwards to, and why it cannot be forwarded ("" when it can)."""
    d = deployments[name]
    model = d.model
    inherited: _Route | None = None
    if model.startswith(_LITELLM_PREFIX):
        model = model[len(_LITELLM_PREFIX) :]
        if model in deployments and model != name:
            if model in seen:
                return ("", "", None, None), f"langfuse/{model} refers back to itself"
            inherited, why = _resolve(deployments, model, (*seen, name))
            if why:
                return inherited, why
            model = inherited[0]
    if inherited is None:
        if model.startswith(_LITELLM_OPENAI):
            model = model[len(_LITELLM_OPENAI) :]
        elif "/" in model:
            return ("", "", None, None), f"provider {model.split('/')[0]}/"
    base = d.api_base or (inherited[1] if inherited else OPENAI_BASE_URL)
    key = d.api_key or (inherited[2] if inherited else None)
    timeout = d.timeout or (inherited[3] if inherited else None) or 600.0
    return (model, base.rstrip("/"), key, timeout), ""


def _litellm_langfuse(context: _Context) -> LangfuseSettings:
    public_key = context.env("LANGFUSE_PUBLIC_KEY")
    secret_key = context.env("LANGFUSE_SECRET_KEY")
    if not public_key or not secret_key:
        raise context.error(
            "environment_variables",
            "expected LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY (here or in the environment) "
            "for the prompts, or --prompts DIR",
        )
    host = context.env("LANGFUSE_BASE_URL") or context.env("LANGFUSE_HOST")
    return LangfuseSettings(host, public_key, secret_key)


# Flags


def _from_flags(given: Mapping[str, Any]) -> GatewayConfig:
    if "upstream" not in given:
        raise ConfigError("--upstream URL|echo is needed without --config")
    if "prompts" not in given and "langfuse" not in given:
        raise ConfigError("--prompts DIR or --langfuse is needed without --config")
    return GatewayConfig(source="the command line", registry=RegistryConfig(), upstreams=())


def _apply(config: GatewayConfig, given: Mapping[str, Any]) -> GatewayConfig:
    """`config` with the command line's values in place of the file's."""
    registry = config.registry
    if "prompts" in given:
        path = Path(given["prompts"]).resolve()
        if not path.is_dir():
            raise ConfigError(f"--prompts: prompt directory {str(path)!r} does not exist")
        registry = replace(registry, files=path, langfuse=None)
    elif "langfuse" in given:
        # The file's Langfuse settings, bounds included, still apply.
        registry = replace(registry, files=None, langfuse=registry.langfuse or LangfuseSettings())
    upstreams = list(config.upstreams)
    if "upstream" in given:
        url = given["upstream"]
        if url != ECHO and _bad_url(url):
            shown = without_userinfo(url)
            raise ConfigError(
                f"--upstream: base_url must be an absolute http(s) URL, got {shown!r}"
            )
        name = upstreams[0].name if upstreams else DEFAULT_UPSTREAM
        key = given.get("upstream_api_key") or os.environ.get("UPSTREAM_API_KEY") or None
        fresh = UpstreamConfig(name, url, key)
        upstreams = [fresh, *upstreams[1:]] if upstreams else [fresh]
    elif "upstream_api_key" in given and upstreams:
        upstreams[0] = replace(upstreams[0], api_key=given["upstream_api_key"])
    if "read_timeout" in given and upstreams:
        timeout = replace(upstreams[0].timeout, read=given["read_timeout"] or None)
        upstreams[0] = replace(upstreams[0], timeout=timeout)

    def pick(section: T, **names: str) -> T:
        values = {attr: given[flag] for attr, flag in names.items() if flag in given}
        return replace(section, **values) if values else section  # type: ignore[type-var]

    return replace(
        config,
        registry=registry,
        upstreams=tuple(upstreams),
        cache=pick(config.cache, ttl="cache_ttl"),
        rewrite=pick(
            config.rewrite,
            strict_variables="strict_variables",
            text_role="text_role",
            client_messages="client_messages",
        ),
        server=pick(
            config.server,
            host="host",
            port="port",
            workers="workers",
            graceful_timeout="graceful_timeout",
            log_level="log_level",
            log_format="log_format",
        ),
    )


def _check(config: GatewayConfig) -> None:
    """What holds across sections, checked once flags are applied."""
    where = config.source
    if config.registry.files is None and config.registry.langfuse is None:
        raise ConfigError(
            f"{where}: registry: expected files or langfuse (or --prompts, --langfuse)"
        )
    if not config.upstreams:
        raise ConfigError(f"{where}: upstreams: expected at least one (or --upstream URL|echo)")
    server = config.server
    if not 0 <= server.port <= 65535 or server.workers < 1 or server.graceful_timeout < 0:
        raise ConfigError(
            f"{where}: server: expected a port from 0 to 65535, at least 1 worker and a "
            "graceful_timeout of at least 0"
        )
    if config.cache.ttl < 0:
        raise ConfigError(f"{where}: cache.ttl: expected a number at least 0")
    keyed = [u.name for u in config.upstreams if u.api_key]
    auth = config.auth
    if keyed and not auth.keys and not auth.allow_anonymous and not is_loopback(config.server.host):
        raise ConfigError(
            f"{where}: auth.keys: expected client keys: upstream {keyed[0]!r} has an api_key and "
            f"the gateway listens on {config.server.host}, so anyone who reaches it would spend "
            "that key; add auth: {keys: [...]} or say auth: {keys: [], allow_anonymous: true}"
        )
    _check_routes(config)
    for model in config.models:
        if not any(u.name == model.upstream for u in config.upstreams):
            raise ConfigError(
                f"{where}: models.{model.alias}.upstream: no upstream {model.upstream!r}"
            )


def _check_routes(config: GatewayConfig) -> None:
    """The gateway's own routes must not shadow one another."""
    if config.metrics is None:
        return
    taken = {"/health": "the health check", "/health/ready": "the readiness check"}
    webhook = config.webhooks.langfuse if config.webhooks is not None else None
    if webhook is not None:
        taken[webhook.path] = "webhooks.langfuse.path"
    clash = taken.get(config.metrics.path)
    if clash is not None:
        raise ConfigError(
            f"{config.source}: metrics.path: {config.metrics.path} is already {clash}'s route"
        )
