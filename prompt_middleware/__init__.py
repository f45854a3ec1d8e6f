"""Managed prompts in front of any OpenAI-compatible endpoint, as pure ASGI middleware."""

from .cache import CachedRegistry
from .errors import (
    InvalidPromptRequest,
    MissingVariables,
    PromptMiddlewareError,
    PromptNotFound,
    RegistryUnavailable,
)
from .middleware import PromptMiddleware
from .prompts import Prompt, PromptRef
from .registries import FileRegistry, InMemoryRegistry, PromptRegistry
from .registries.langfuse import LangfuseRegistry
from .upstream import UpstreamProxy

__all__ = [
    "CachedRegistry",
    "FileRegistry",
    "InMemoryRegistry",
    "InvalidPromptRequest",
    "LangfuseRegistry",
    "MissingVariables",
    "Prompt",
    "PromptMiddleware",
    "PromptMiddlewareError",
    "PromptNotFound",
    "PromptRef",
    "PromptRegistry",
    "RegistryUnavailable",
    "UpstreamProxy",
]
