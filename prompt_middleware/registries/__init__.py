"""Prompt sources: the `PromptRegistry` protocol and its implementations."""

from .base import PromptRegistry
from .cache import CachedRegistry
from .files import FileRegistry
from .memory import InMemoryRegistry

__all__ = ["CachedRegistry", "FileRegistry", "InMemoryRegistry", "PromptRegistry"]
