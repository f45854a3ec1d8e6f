"""The interface every prompt source implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..core.errors import InvalidPrompt
from ..core.prompts import Prompt, PromptRef

__all__ = ["PromptRegistry", "ensure_prompt"]


@runtime_checkable
class PromptRegistry(Protocol):
    """A source of prompts.

    `get_prompt` returns the prompt with that name and version, or carrying that label; with
    neither, the one labelled `production`. It raises `PromptNotFound` when there is none and
    `RegistryUnavailable` when the source cannot answer. A registry that holds resources may also
    define `async def aclose()`; the middleware calls it on lifespan shutdown.
    """

    async def get_prompt(
        self, name: str, *, version: int | None = None, label: str | None = None
    ) -> Prompt: ...


def ensure_prompt(value: object, ref: PromptRef) -> Prompt:
    """`value`, a registry's answer for `ref`, if it is a `Prompt`; else `InvalidPrompt`."""
    if isinstance(value, Prompt):
        return value
    kind = type(value).__name__
    raise InvalidPrompt(f"The registry returned a {kind}, not a Prompt, for prompt {ref}.")
