"""Prompt sources: the `PromptRegistry` protocol and its implementations."""

from .base import PromptRegistry
from .files import FileRegistry
from .memory import InMemoryRegistry

__all__ = ["FileRegistry", "InMemoryRegistry", "PromptRegistry"]
