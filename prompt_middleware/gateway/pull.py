"""`prompt-middleware pull`: export prompts from Langfuse into a `FileRegistry` folder.

Every version of every prompt (or of the named ones) is fetched as Langfuse serves it and written
to `DIR/<name>.json` as a list of Langfuse prompt objects (labels, config, tags and commit
messages included), so folder names become folders. `FileRegistry(DIR)` then answers each name,
version and label as Langfuse did: the files keep Langfuse's `latest` label, which tells
`FileRegistry` to take the labels as written.

A second run rewrites nothing that did not change (files are compared first and replaced
atomically), so the folder can live in git and a pull shows up as a reviewable diff. Names that
would leave the folder are refused, never written.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from ..core.errors import PromptNotFound
from ..registries.files import _is_safe_name
from ..registries.langfuse import LangfuseRegistry

__all__ = ["PullResult", "pull_prompts"]

Progress = Callable[[int, int, str], None]


@dataclass
class PullResult:
    """What a pull did, by prompt name."""

    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # names that would leave the folder
    missing: list[str] = field(default_factory=list)  # asked for by name, not in Langfuse

    @property
    def ok(self) -> bool:
        return not self.refused and not self.missing


async def pull_prompts(
    registry: LangfuseRegistry,
    directory: str | os.PathLike[str],
    *,
    names: Sequence[str] = (),
    label: str | None = None,
    progress: Progress | None = None,
    page_size: int = 100,
) -> PullResult:
    """Export prompts from `registry` into `directory` (created if needed).

    `names`: only these prompts (default: all). `label`: only the versions carrying it.
    `progress(done, total, name)` is called after each prompt. `page_size`: prompts per list
    request.
    """
    root = await anyio.to_thread.run_sync(_make_root, Path(directory))
    result = PullResult()
    entries: list[dict[str, Any]] = []
    if names:
        for wanted in names:
            listed = registry.list_prompts(name=wanted, label=label, page_size=page_size)
            found = [e async for e in listed if e.get("name") == wanted]
            if found:
                entries.extend(found)
            else:
                result.missing.append(wanted)
    else:
        entries = [e async for e in registry.list_prompts(label=label, page_size=page_size)]

    for done, entry in enumerate(entries, start=1):
        name = entry.get("name")
        if not isinstance(name, str) or not _is_safe_name(name):
            result.refused.append(str(name))
        else:
            bodies = await _versions(registry, name, entry.get("versions"))
            text = json.dumps(bodies, indent=2, ensure_ascii=False) + "\n"
            changed = await anyio.to_thread.run_sync(_export, root, name, text)
            if changed is None:
                result.refused.append(name)
            else:
                (result.written if changed else result.unchanged).append(name)
        if progress is not None:
            progress(done, len(entries), str(name))
    return result


def _make_root(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory.resolve()


def _export(root: Path, name: str, text: str) -> bool | None:
    """Write the file of prompt `name` if its text changed; None if it would leave `root`."""
    path = _target(root, name)
    return None if path is None else _write_if_changed(path, text)


async def _versions(registry: LangfuseRegistry, name: str, versions: Any) -> list[dict[str, Any]]:
    if not isinstance(versions, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in versions
    ):
        raise PromptNotFound(f"Langfuse listed prompt {name!r} without its versions.")
    return [await registry.get_prompt_data(name, version) for version in sorted(set(versions))]


def _target(root: Path, name: str) -> Path | None:
    """Where prompt `name` is written, or None when that would not be inside `root`."""
    path = root / (name + ".json")
    try:
        # A folder on the way that is a symlink out of root is refused too.
        if not path.parent.resolve().is_relative_to(root):
            return None
        if path.is_symlink() or (path.exists() and not path.resolve().is_relative_to(root)):
            return None
    except (OSError, RuntimeError):
        return None
    return path


def _write_if_changed(path: Path, text: str) -> bool:
    data = text.encode("utf-8")
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".pull-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return True
