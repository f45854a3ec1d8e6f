"""Prompts kept as files in a directory, one file per prompt name.

`support/triage.json` under the directory is the prompt `support/triage`, as Langfuse names
prompts in folders. Files are read on every lookup (the middleware's cache sits in front), in a
worker thread so the event loop never blocks on disk. With `watch=True`, `watch(on_change)` tells
the cache which prompts changed on disk as soon as they do (the `watch` extra: `watchfiles`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio

from ..core._json import load_document
from ..core.errors import InvalidPrompt
from ..core.prompts import DEFAULT_LABEL, Prompt, PromptRef
from .dotprompt import DOTPROMPT_SUFFIX, load_dotprompt_family
from .memory import LATEST, PromptVersions, lookup

__all__ = ["FileRegistry"]

logger = logging.getLogger("prompt_middleware.files")

# Tried in this order when several files share a name.
EXTENSIONS = (".json", ".yaml", ".yml", ".txt", ".md", DOTPROMPT_SUFFIX)
TEXT_EXTENSIONS = (".txt", ".md")


class FileRegistry:
    """A registry over a directory of prompt files.

    - `.json`: a Langfuse-shaped prompt object (`type`, `prompt`, `config`, `version`, `labels`)
      or a list of such objects, one per version.
    - `.yaml` / `.yml`: the same, with the `yaml` extra installed.
    - `.txt` / `.md`: the whole file is a text prompt, version 1 (less the newline that ends
      its last line).
    - `.prompt`: Google's dotprompt, with the `dotprompt` extra; `name.variant.prompt` files
      beside it are served for the label `variant` (see `registries/dotprompt.py`).

    When no version in a file carries the `production` label, the highest version gets it, so a
    file without labels is served to requests that name no version or label; unless a version
    carries `latest`, as the files `prompt-middleware pull` writes from Langfuse do.

    With `watch=True`, `PromptMiddleware` runs `watch()` for its lifetime, so a changed, added or
    removed file is served at once whatever the cache's TTL.
    """

    def __init__(self, directory: str | os.PathLike[str], *, watch: bool = False) -> None:
        self.directory = Path(directory).resolve()
        if not self.directory.is_dir():
            raise ValueError(f"prompt directory {str(self.directory)!r} does not exist")
        self.watching = watch
        self._stop: anyio.Event | None = None  # set to end a running watch()
        self._stopped: anyio.Event | None = None

    async def aclose(self) -> None:
        """End a running `watch()` and wait (up to 5 s) until it has: its thread must be gone
        before the ASGI lifespan completes, or the server cancels the lifespan mid-cleanup."""
        if self._stop is not None and self._stopped is not None:
            self._stop.set()
            with anyio.move_on_after(5):
                await self._stopped.wait()

    async def watch(self, on_change: Callable[[str | None], object]) -> None:
        """Call `on_change(name)` for each prompt whose file changes (None: maybe any), until
        cancelled. Returns at once without `watch=True`; without `watchfiles`, or when the
        directory cannot be watched, it logs why and returns (the cache's TTL then applies)."""
        if not self.watching:
            return
        try:
            from watchfiles import awatch
        except ImportError:
            logger.warning(
                "not watching %s: pip install 'prompt-middleware[watch]' (changed files are "
                "served once the cache TTL ends)",
                self.directory,
            )
            return
        self._stop = stop = anyio.Event()
        self._stopped = stopped = anyio.Event()
        try:
            async with anyio.create_task_group() as task_group:
                # awatch's thread only notices cancellation when its stop event is set.
                task_group.start_soon(_set_when_cancelled, stop)
                changes = awatch(self.directory, debounce=50, step=20, stop_event=stop)
                async for batch in changes:
                    for name in {self._name_of(path) for _, path in batch}:
                        logger.info("prompt file changed: %s", name or "(several)")
                        on_change(name)
                task_group.cancel_scope.cancel()  # stopped by aclose()
        except Exception as exc:  # e.g. out of inotify watches
            logger.warning(
                "stopped watching %s (%s: %s): changed files are served once the cache TTL ends",
                self.directory,
                type(exc).__name__,
                exc,
            )
        finally:
            stopped.set()

    def _name_of(self, path: str) -> str | None:
        """The prompt a changed path holds; None when it may be several (a folder, say)."""
        changed = Path(path)
        if changed.suffix not in EXTENSIONS:
            return None
        try:
            relative = changed.parent.resolve().relative_to(self.directory)
        except (OSError, ValueError):
            return None
        return (relative / changed.stem).as_posix().removeprefix("./")

    def __repr__(self) -> str:
        return f"FileRegistry({str(self.directory)!r})"

    async def get_prompt(
        self, name: str, *, version: int | None = None, label: str | None = None
    ) -> Prompt:
        ref = PromptRef(name, version, label)
        # Abandoned on cancel, so a hung disk cannot hold a request past the cache's timeout.
        versions = await anyio.to_thread.run_sync(self._load, name, abandon_on_cancel=True)
        return lookup({name: versions} if versions else {}, ref)

    def _load(self, name: str) -> PromptVersions | None:
        path = self._find(name)
        if path is None:
            return None
        if path.suffix == DOTPROMPT_SUFFIX:  # with its variants: see registries/dotprompt.py
            return load_dotprompt_family(name, path, self.directory)
        try:
            # utf-8-sig: editors on Windows start files with a BOM, which is not the prompt's.
            raw = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            reason = type(exc).__name__
            raise InvalidPrompt(f"prompt {name!r}: cannot read its file ({reason})") from None
        return _versions(name, path.suffix, raw)

    def _find(self, name: str) -> Path | None:
        if not _is_safe_name(name):
            return None
        for ext in EXTENSIONS:
            candidate = self.directory / (name + ext)
            # resolve() follows symlinks, so a link pointing out of the directory is refused too.
            try:
                resolved = candidate.resolve()
                if resolved.is_relative_to(self.directory) and resolved.is_file():
                    return resolved
            except (OSError, RuntimeError):  # e.g. a name too long for the file system
                continue
        return None


async def _set_when_cancelled(event: anyio.Event) -> None:
    try:
        await anyio.sleep_forever()
    finally:
        event.set()


def _is_safe_name(name: str) -> bool:
    if not name or "\x00" in name or "\\" in name or name.startswith("/"):
        return False
    try:
        name.encode("utf-8")  # lone surrogates name no file
    except UnicodeEncodeError:
        return False
    parts = name.split("/")
    return all(part not in ("", ".", "..") for part in parts) and not os.path.isabs(name)


def _versions(name: str, suffix: str, raw: str) -> PromptVersions:
    if suffix in TEXT_EXTENSIONS:
        # The newline that ends a text file's last line is the file's, not the prompt's.
        text = raw[:-2] if raw.endswith("\r\n") else raw.removesuffix("\n")
        entries: list[Any] = [{"type": "text", "prompt": text}]
    else:
        data = _parse_structured(name, suffix, raw)
        entries = data if isinstance(data, list) else [data]
    prompts = [_entry_to_prompt(name, i, entry) for i, entry in enumerate(entries)]
    if not prompts:
        raise InvalidPrompt(f"prompt {name!r}: its file holds no versions")
    if len({p.version for p in prompts}) != len(prompts):
        raise InvalidPrompt(f"prompt {name!r}: its file holds the same version twice")
    # A version labelled `latest` (Langfuse's own label, as `pull` exports it): labels as written.
    if not any(DEFAULT_LABEL in p.labels or LATEST in p.labels for p in prompts):
        newest = max(prompts, key=lambda p: p.version)
        prompts[prompts.index(newest)] = _with_label(newest, DEFAULT_LABEL)
    versions = PromptVersions()
    for prompt in prompts:
        versions.add(prompt)
    return versions


def _parse_structured(name: str, suffix: str, raw: str) -> Any:
    if suffix == ".json":
        try:
            return load_document(raw)
        except ValueError as exc:
            raise InvalidPrompt(f"prompt {name!r}: invalid JSON ({exc})") from None
    try:
        import yaml
    except ImportError:
        raise InvalidPrompt(
            f"prompt {name!r} is YAML: install the extra, pip install 'prompt-middleware[yaml]'"
        ) from None
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise InvalidPrompt(f"prompt {name!r}: invalid YAML ({type(exc).__name__})") from None
    except RecursionError:
        raise InvalidPrompt(f"prompt {name!r}: invalid YAML (nested too deeply)") from None


def _entry_to_prompt(name: str, index: int, entry: Any) -> Prompt:
    if not isinstance(entry, dict):
        raise InvalidPrompt(f"prompt {name!r}: version entry {index} is not an object")
    declared = entry.get("name", name)
    if declared != name:
        raise InvalidPrompt(f"prompt {name!r}: its file declares the name {declared!r}")
    return Prompt.from_langfuse({**entry, "name": name, "version": entry.get("version", index + 1)})


def _with_label(prompt: Prompt, label: str) -> Prompt:
    return replace(prompt, labels=(*prompt.labels, label))
