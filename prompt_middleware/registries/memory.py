"""Prompts held in memory: for tests, demos and prompts shipped with the code."""

from __future__ import annotations

from collections.abc import Iterable

from ..core.errors import PromptNotFound
from ..core.prompts import Prompt, PromptRef

__all__ = ["InMemoryRegistry", "PromptVersions"]

LATEST = "latest"


class PromptVersions:
    """All versions of one prompt name, with label lookup (`latest` = highest version)."""

    __slots__ = ("_by_version",)

    def __init__(self) -> None:
        self._by_version: dict[int, Prompt] = {}

    def add(self, prompt: Prompt) -> None:
        self._by_version[prompt.version] = prompt

    def find(self, version: int | None, label: str | None) -> Prompt | None:
        if version is not None:
            found = self._by_version.get(version)
            if found is None or (label is not None and not _has_label(found, label, self)):
                return None
            return found
        assert label is not None
        if label == LATEST:
            return self._by_version[max(self._by_version)] if self._by_version else None
        # A label belongs to one version; if several claim it, the newest wins.
        for v in sorted(self._by_version, reverse=True):
            if label in self._by_version[v].labels:
                return self._by_version[v]
        return None


def _has_label(prompt: Prompt, label: str, versions: PromptVersions) -> bool:
    # `latest` is always the highest version, as for a label-only lookup, whatever labels say.
    if label == LATEST:
        return versions.find(None, LATEST) is prompt
    return label in prompt.labels


def lookup(table: dict[str, PromptVersions], ref: PromptRef) -> Prompt:
    """Resolve `ref` in a name -> versions table, or raise `PromptNotFound`."""
    versions = table.get(ref.name)
    found = versions.find(ref.version, ref.effective_label) if versions is not None else None
    if found is None:
        raise PromptNotFound(f"Prompt {ref} not found.", param="prompt_id")
    return found


class InMemoryRegistry:
    """A registry over `Prompt` objects given in code. Add more with `add()`."""

    def __init__(self, prompts: Iterable[Prompt] = ()) -> None:
        self._prompts: dict[str, PromptVersions] = {}
        for prompt in prompts:
            self.add(prompt)

    def add(self, prompt: Prompt) -> None:
        self._prompts.setdefault(prompt.name, PromptVersions()).add(prompt)

    async def get_prompt(
        self, name: str, *, version: int | None = None, label: str | None = None
    ) -> Prompt:
        return lookup(self._prompts, PromptRef(name, version, label))
