"""`prompt-middleware`: run a standalone prompt gateway, or render a prompt to check it.

    prompt-middleware serve --config gateway.yaml                         # see docs/gateway.md
    prompt-middleware serve --config litellm_config.yaml                  # LiteLLM's, as is
    prompt-middleware serve --upstream https://api.openai.com/v1 --prompts ./prompts
    prompt-middleware serve --upstream echo --prompts examples/prompts    # dry run, no tokens
    prompt-middleware render support/triage --var product=Acme --prompts examples/prompts

`serve` needs the `server` extra (uvicorn). Flags override the config file. With `--upstream`,
the upstream API key is read from the environment variable `UPSTREAM_API_KEY` (or
`--upstream-api-key`, which other users can see in the process list); when set, it replaces the
`Authorization` header clients send. Errors are reported as one line on stderr with exit status 1
(2 for command-line usage errors).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx

from .._asgi import json_text
from ..core.errors import PromptMiddlewareError
from ..core.prompts import Prompt
from ..registries.base import PromptRegistry
from .config import LOG_FORMATS, LOG_LEVELS, GatewayConfig, UpstreamConfig
from .observing import describe as describe_observability

__all__ = ["main"]

PROG = "prompt-middleware"
API_KEY_ENV = "UPSTREAM_API_KEY"

logger = logging.getLogger("prompt_middleware.cli")


class CLIError(Exception):
    """A problem to report as one line on stderr."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            if args.config is None and args.upstream is None:
                parser.error("serve: --upstream URL|echo is needed without --config")
            if args.config is None and not (args.prompts or args.langfuse):
                parser.error("serve: --prompts DIR or --langfuse is needed without --config")
            return _serve(args)
        if args.command == "pull":
            return _pull(args)
        if args.command == "invalidate":
            return _invalidate(args)
        return _render(args)
    except CLIError as exc:
        _say(f"error: {exc}")
    except PromptMiddlewareError as exc:
        _say(f"error: {exc.message}")
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a registry's own failure, say: still one line, no traceback
        _say(f"error: {type(exc).__name__}: {exc}")
    return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve prompts from a registry to any OpenAI-compatible endpoint.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run a gateway: PromptMiddleware in front of an upstream (needs uvicorn)",
        description="Run PromptMiddleware in front of an OpenAI-compatible upstream.",
    )
    serve.add_argument(
        "--config",
        metavar="FILE",
        help="gateway config (YAML or JSON; LiteLLM's config.yaml too): see docs/gateway.md",
    )
    serve.add_argument(
        "--upstream",
        metavar="URL|echo",
        help="base URL of the upstream API, e.g. https://api.openai.com/v1, or 'echo' for a "
        "built-in upstream that answers with the request it received (replaces the config's "
        "default upstream)",
    )
    _add_registry_options(serve, required=False)
    serve.add_argument("--host", help="interface to listen on [127.0.0.1]")
    serve.add_argument("--port", type=int, help="port to listen on [4000]")
    serve.add_argument("--workers", type=int, help="worker processes [1]")
    serve.add_argument(
        "--graceful-timeout",
        type=float,
        metavar="SECONDS",
        help="on SIGTERM, how long in-flight requests and streams may finish [30]",
    )
    serve.add_argument(
        "--cache-ttl",
        type=float,
        metavar="SECONDS",
        help="seconds to cache prompts, 0 for none [60]",
    )
    serve.add_argument(
        "--strict-variables",
        action="store_true",
        default=None,
        help="answer 400 when a prompt variable or placeholder is left unfilled",
    )
    serve.add_argument(
        "--text-role",
        choices=("user", "system"),
        help="role a text prompt is sent as [user]",
    )
    serve.add_argument(
        "--client-messages",
        choices=("replace", "append"),
        help="what happens to the client's own messages [replace]",
    )
    serve.add_argument(
        "--upstream-api-key",
        metavar="KEY",
        help=f"API key sent upstream as a bearer token; prefer the {API_KEY_ENV} variable",
    )
    serve.add_argument(
        "--read-timeout",
        type=float,
        metavar="SECONDS",
        help="longest silence from the upstream before answering 504, 0 for none [600]",
    )
    serve.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="[info]",
    )
    serve.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="text lines, or one JSON object per line (access log fields as keys) [text]",
    )

    render = commands.add_parser(
        "render",
        help="print a prompt compiled to chat messages, as JSON",
        description="Fetch a prompt and print it compiled to chat messages, as JSON.",
    )
    render.add_argument("name", help="prompt name, e.g. support/triage")
    which = render.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="prompt version")
    which.add_argument("--label", help="prompt label [production]")
    render.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a variable (repeatable); overrides --vars-json",
    )
    render.add_argument(
        "--vars-json",
        metavar="FILE",
        help="JSON object of variables ('-' for stdin); lists of messages fill placeholders",
    )
    render.add_argument(
        "--text-role",
        default="user",
        choices=("user", "system"),
        help="role a text prompt is rendered as [user]",
    )
    render.add_argument(
        "--strict-variables",
        action="store_true",
        help="fail when a variable or placeholder is left unfilled",
    )
    _add_registry_options(render)
    _add_pull_parser(commands)
    _add_invalidate_parser(commands)
    return parser


def _add_registry_options(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--prompts", metavar="DIR", help="directory of prompt files")
    group.add_argument(
        "--langfuse",
        action="store_true",
        help="prompts from Langfuse (LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY, LANGFUSE_HOST)",
    )


# serve


_OVERRIDES = (
    "upstream",
    "upstream_api_key",
    "read_timeout",
    "prompts",
    "langfuse",
    "host",
    "port",
    "workers",
    "graceful_timeout",
    "cache_ttl",
    "strict_variables",
    "text_role",
    "client_messages",
    "log_level",
    "log_format",
)


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        raise CLIError("'serve' needs uvicorn: pip install 'prompt-middleware[server]'") from None
    from .. import observability
    from ._stack import server_stack
    from .app import SERVE_ENV, build_app, serve_environment
    from .config import ConfigError, load_config
    from .observing import prepare_worker_metrics

    overrides = {name: getattr(args, name) for name in _OVERRIDES}
    if overrides["prompts"] is not None:
        overrides["prompts"] = str(Path(overrides["prompts"]).resolve())
    overrides = {k: v for k, v in overrides.items() if v is not None and v is not False}
    path = str(Path(args.config).resolve()) if args.config else None
    try:
        config = load_config(path, overrides)
        observability.configure_logging(config.server.log_level, config.server.log_format)
        prepare_worker_metrics(config)  # before the app imports prometheus_client
        # In the parent too, so that workers start from a checked config.
        app = build_app(config, own_process=True)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    if path is not None:
        # One line, as the file's own name reads better than its resolved path.
        config = replace(config, source=args.config)
    logger.info(describe(config))
    logger.info("serving with %s", server_stack())
    server = config.server
    options: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "log_level": server.log_level,
        "lifespan": "on",
        # The gateway writes one access line per request itself (`prompt_middleware.access`,
        # with the prompt, cache and upstream time); uvicorn's would be a second, without them.
        "access_log": False,
        "timeout_graceful_shutdown": server.graceful_timeout,
    }
    if server.log_format == "json":  # uvicorn's lines through our JSON handler, not its own
        options["log_config"] = None
    # uvicorn drains, then raises the SIGTERM it caught again (Server.capture_signals) to end
    # with the signal's default action; a handler that does nothing lets `serve` exit 0 instead.
    signal.signal(signal.SIGTERM, _drained)
    if server.workers > 1:
        os.environ[SERVE_ENV] = serve_environment(path, overrides)
        target: Any = "prompt_middleware.gateway.app:create_app"
        uvicorn.run(target, factory=True, workers=server.workers, **options)
    else:
        uvicorn.run(app, **options)
    return 0


def _drained(signum: int, frame: object) -> None:
    logger.info("%s stopped", PROG)


def describe(config: GatewayConfig) -> str:
    """The startup line: what is served, where, from which registry, how clients authenticate."""
    server = config.server
    workers = f" ({server.workers} workers)" if server.workers > 1 else ""
    registry = config.registry
    if registry.files is not None:
        watched = ", reloaded on change" if registry.watch else ""
        prompts = f"files in {registry.files}{watched}"
    else:
        from ..registries.langfuse import BASE_URL_ENV, DEFAULT_BASE_URL, HOST_ENV
        from ._target import without_userinfo

        # As LangfuseRegistry picks it; masked, though a URL with userinfo is refused there.
        host = (
            (registry.langfuse.host if registry.langfuse else None)
            or os.environ.get(BASE_URL_ENV)
            or os.environ.get(HOST_ENV)
            or DEFAULT_BASE_URL
        )
        prompts = f"Langfuse at {without_userinfo(host)}"
    upstreams = [_describe_upstream(u, len(config.upstreams) > 1) for u in config.upstreams]
    label = "upstreams" if len(upstreams) > 1 else "upstream"
    parts = [
        f"{PROG} listening on http://{server.host}:{server.port}{workers}",
        f"prompts: {prompts}",
        f"{label}: {', '.join(upstreams)}",
    ]
    if config.models:
        parts.append(f"models: {', '.join(m.alias for m in config.models)}")
    keys = len(config.auth.keys)
    if keys:
        parts.append(
            f"auth: {keys} client key{'s' if keys > 1 else ''} "
            "(Authorization: Bearer, api-key or x-api-key)"
        )
    else:
        parts.append("auth: none (any client that reaches it may call it)")
    parts += describe_observability(config)
    return "; ".join(parts)


def _describe_upstream(upstream: UpstreamConfig, named: bool) -> str:
    name = f"{upstream.name}=" if named else ""
    if upstream.base_url == "echo":
        return f"{name}echo (answers with the request it received, no tokens spent)"
    url = httpx.URL(upstream.base_url).copy_with(username=None, password=None)
    key = "server-side API key" if upstream.api_key else "no API key of its own"
    return f"{name}{url} ({key})"


# render


def _render(args: argparse.Namespace) -> int:
    # A registry's retry warnings would bury the one line that matters.
    logging.basicConfig(level=logging.ERROR, format=f"{PROG}: %(message)s")
    variables = _variables(args.vars_json, args.var)
    registry, _ = _registry(args)
    prompt = anyio.run(_fetch, registry, args.name, args.version, args.label)
    compiled = prompt.compile_result(variables, text_role=args.text_role)
    unfilled = []
    if compiled.missing_variables:
        unfilled.append("variables " + ", ".join(compiled.missing_variables))
    if compiled.placeholders:
        unfilled.append("placeholders " + ", ".join(name for _, name in compiled.placeholders))
    if unfilled and args.strict_variables:
        raise CLIError(f"prompt {prompt.name!r} left unfilled: {'; '.join(unfilled)}")
    print(json_text(compiled.messages, indent=2))
    if unfilled:
        _say(f"warning: left unfilled: {'; '.join(unfilled)} (placeholders are dropped)")
    return 0


async def _fetch(
    registry: PromptRegistry, name: str, version: int | None, label: str | None
) -> Prompt:
    try:
        return await registry.get_prompt(name, version=version, label=label)
    finally:
        closer = getattr(registry, "aclose", None)
        if closer is not None:
            await closer()


def _variables(vars_json: str | None, pairs: Sequence[str]) -> dict[str, Any]:
    variables: dict[str, Any] = {}
    if vars_json is not None:
        variables.update(_read_vars_file(vars_json))
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise CLIError(f"--var {pair!r}: expected NAME=VALUE")
        variables[name.strip()] = value
    return variables


def _read_vars_file(path: str) -> Mapping[str, Any]:
    where = "stdin" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"--vars-json: cannot read {where}: {_reason(exc)}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CLIError(f"--vars-json: {where} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CLIError(f"--vars-json: {where} must hold a JSON object")
    return data


# shared


def _registry(args: argparse.Namespace) -> tuple[PromptRegistry, str]:
    """The registry chosen on the command line, and a description for the startup log."""
    try:
        if args.langfuse:
            from ..registries.langfuse import LangfuseRegistry

            langfuse = LangfuseRegistry()
            return langfuse, f"Langfuse at {langfuse.base_url}"
        from ..registries.files import FileRegistry

        files = FileRegistry(args.prompts)
        return files, f"files in {files.directory}"
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _say(line: str) -> None:
    print(f"{PROG}: {line}", file=sys.stderr)


# pull


def _add_pull_parser(commands: Any) -> None:
    pull = commands.add_parser(
        "pull",
        help="export prompts from Langfuse into a folder of prompt files",
        description=(
            "Write every version of every (or each named) Langfuse prompt, with labels, config,"
            " tags and commit messages, to DIR/<name>.json, as `serve --prompts DIR` reads them."
            " Unchanged files are left alone."
        ),
    )
    pull.add_argument(
        "--langfuse",
        action="store_true",
        required=True,
        help="from Langfuse (LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY, LANGFUSE_HOST)",
    )
    pull.add_argument("--to", required=True, metavar="DIR", help="folder to write into")
    pull.add_argument(
        "--name", action="append", default=[], metavar="N", help="only this prompt (repeatable)"
    )
    pull.add_argument("--label", metavar="L", help="only the versions carrying this label")


def _pull(args: argparse.Namespace) -> int:
    from ..registries.langfuse import LangfuseRegistry
    from .pull import pull_prompts

    try:
        registry = LangfuseRegistry()
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    tty = sys.stderr.isatty()

    def progress(done: int, total: int, name: str) -> None:
        if tty:
            sys.stderr.write(f"\r\x1b[K{PROG}: pulled {done}/{total} {name}")
            sys.stderr.flush()

    async def run() -> Any:
        async with registry:
            return await pull_prompts(
                registry, args.to, names=args.name, label=args.label, progress=progress
            )

    try:
        result = anyio.run(run)
    finally:
        if tty:
            sys.stderr.write("\r\x1b[K")
    for name in result.refused:
        _say(f"refused prompt {name!r}: its name would leave {args.to}")
    for name in result.missing:
        _say(f"no prompt {name!r} in Langfuse")
    total = len(result.written) + len(result.unchanged)
    _say(
        f"pulled {total} prompts into {args.to}: "
        f"{len(result.written)} written, {len(result.unchanged)} unchanged"
    )
    return 0 if result.ok else 1


# invalidate


def _add_invalidate_parser(commands: Any) -> None:
    invalidate = commands.add_parser(
        "invalidate",
        help="drop a cached prompt (or all) in every worker and replica sharing Redis",
        description=(
            "Publish an invalidation through the Redis the gateways share (cache.redis_url):"
            " every worker drops the prompt and fetches it again on its next request."
        ),
    )
    invalidate.add_argument("name", nargs="?", help="prompt name; none: every prompt")
    where = invalidate.add_mutually_exclusive_group(required=True)
    where.add_argument("--redis-url", metavar="URL", help="the Redis the gateways share")
    where.add_argument("--config", metavar="FILE", help="a gateway config with cache.redis_url")


def _invalidate(args: argparse.Namespace) -> int:
    url = args.redis_url if args.redis_url is not None else _redis_url(args.config)
    try:
        from ..registries.coherence.redis import publish_invalidation
    except ImportError:
        raise CLIError(
            "'invalidate' needs the redis extra: pip install 'prompt-middleware[redis]'"
        ) from None
    try:
        anyio.run(partial(publish_invalidation, url, args.name))
    except Exception as exc:
        # The URL may hold a password: name the failure, not the target.
        raise CLIError(f"Redis did not take the invalidation ({type(exc).__name__})") from None
    what = f"prompt {args.name!r}" if args.name else "every prompt"
    _say(f"invalidated {what} in every worker sharing that Redis")
    return 0


def _redis_url(path: str) -> str:
    """`cache.redis_url` of a gateway config, the rest of the file left unresolved."""
    from .config import ConfigError, load_redis_url

    try:
        url = load_redis_url(path)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    if url is None:
        raise CLIError(f"{path}: cache.redis_url is not set")
    return url
