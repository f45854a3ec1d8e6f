"""`prompt-middleware`: run a standalone prompt gateway, or render a prompt to check it.

    prompt-middleware serve --upstream https://api.openai.com/v1 --prompts ./prompts
    prompt-middleware serve --upstream echo --prompts examples/prompts    # dry run, no tokens
    prompt-middleware render support/triage --var product=Acme --prompts examples/prompts

`serve` needs the `server` extra (uvicorn). The upstream API key is read from the environment
variable `UPSTREAM_API_KEY` (or `--upstream-api-key`, which other users can see in the process
list); when set, it replaces the `Authorization` header clients send, so they need no real key.
Errors are reported as one line on stderr with exit status 1 (2 for command-line usage errors).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio

from .._asgi import json_text
from ..core.errors import PromptMiddlewareError
from ..core.prompts import Prompt
from ..registries.base import PromptRegistry
from .echo import EchoUpstream

__all__ = ["main"]

PROG = "prompt-middleware"
API_KEY_ENV = "UPSTREAM_API_KEY"

logger = logging.getLogger("prompt_middleware.cli")


class CLIError(Exception):
    """A problem to report as one line on stderr."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "pull":
            return _pull(args)
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
        "--upstream",
        required=True,
        metavar="URL|echo",
        help="base URL of the upstream API, e.g. https://api.openai.com/v1, or 'echo' for a "
        "built-in upstream that answers with the request it received",
    )
    _add_registry_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on [127.0.0.1]")
    serve.add_argument("--port", type=int, default=4000, help="port to listen on [4000]")
    serve.add_argument(
        "--cache-ttl",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="seconds to cache prompts, 0 for none [60]",
    )
    serve.add_argument(
        "--strict-variables",
        action="store_true",
        help="answer 400 when a prompt variable or placeholder is left unfilled",
    )
    serve.add_argument(
        "--text-role",
        default="user",
        choices=("user", "system"),
        help="role a text prompt is sent as [user]",
    )
    serve.add_argument(
        "--client-messages",
        default="replace",
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
        default=600.0,
        metavar="SECONDS",
        help="longest silence from the upstream before answering 504, 0 for none [600]",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="[info]",
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
    return parser


def _add_registry_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--prompts", metavar="DIR", help="directory of prompt files")
    group.add_argument(
        "--langfuse",
        action="store_true",
        help="prompts from Langfuse (LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY, LANGFUSE_HOST)",
    )


# serve


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        raise CLIError("'serve' needs uvicorn: pip install 'prompt-middleware[server]'") from None
    from ..middleware import PromptMiddleware
    from .upstream import UpstreamProxy

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(message)s")
    registry, registry_text = _registry(args)
    upstream: Any
    if args.upstream == "echo":
        upstream = EchoUpstream()
        upstream_text = "echo (answers with the request it received, no tokens spent)"
    else:
        api_key = args.upstream_api_key or os.environ.get(API_KEY_ENV)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        read_timeout = args.read_timeout if args.read_timeout > 0 else None
        try:
            upstream = UpstreamProxy(args.upstream, headers=headers, timeout=read_timeout)
        except ValueError as exc:
            raise CLIError(f"--upstream: {exc}") from None
        key_text = "server-side API key" if api_key else "clients' Authorization"
        upstream_text = f"{upstream.base_url.copy_with(username=None, password=None)} ({key_text})"
    app = PromptMiddleware(
        upstream,
        registry=registry,
        cache_ttl=args.cache_ttl,
        strict_variables=args.strict_variables,
        text_role=args.text_role,
        client_messages=args.client_messages,
    )
    logger.info(
        "%s listening on http://%s:%d; prompts: %s; upstream: %s",
        PROG,
        args.host,
        args.port,
        registry_text,
        upstream_text,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, lifespan="on")
    return 0


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
