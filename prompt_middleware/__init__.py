"""Managed prompts in front of any OpenAI-compatible endpoint, as pure ASGI middleware."""

from .core.errors import (
    InvalidPromptRequest,
    MissingVariables,
    PromptMiddlewareError,
    PromptNotFound,
    RegistryUnavailable,
)
from .core.prompts import Prompt, PromptRef
from .gateway.upstream import UpstreamProxy
from .middleware import PromptMiddleware
from .registries import CachedRegistry, FileRegistry, InMemoryRegistry, PromptRegistry
from .registries.fallback import FallbackRegistry
from .registries.langfuse import LangfuseRegistry

__all__ = [
    "CachedRegistry",
    "FallbackRegistry",
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
