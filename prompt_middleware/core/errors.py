"""Exception types and the OpenAI-shaped error responses they become."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

__all__ = [
    "InvalidApiKey",
    "InvalidContentEncoding",
    "InvalidPrompt",
    "InvalidPromptRequest",
    "InvalidPromptVariables",
    "MethodNotAllowed",
    "MissingVariables",
    "PromptMiddlewareError",
    "PromptNotFound",
    "RegistryAuthError",
    "RegistryUnavailable",
    "RequestCredentialsDisabled",
    "RequestTimeout",
    "RequestTooLarge",
    "UnsupportedContentEncoding",
    "error_body",
]


class PromptMiddlewareError(Exception):
    """Base of every error this library raises; knows how to answer as OpenAI does."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "prompt_middleware_error"
    error_type: ClassVar[str] = "server_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_dict(self) -> dict[str, dict[str, str | None]]:
        return error_body(self.message, self.error_type, self.param, self.code)


class InvalidPromptRequest(PromptMiddlewareError):
    """A prompt field of the request body has the wrong type or value."""

    status_code = 400
    code = "invalid_prompt_request"
    error_type = "invalid_request_error"


class MissingVariables(InvalidPromptRequest):
    """`strict_variables` is on and the request left variables or placeholders unfilled."""

    code = "missing_prompt_variables"

    def __init__(
        self,
        prompt_name: str,
        variables: Iterable[str] = (),
        placeholders: Iterable[str] = (),
    ) -> None:
        self.variables = tuple(variables)
        self.placeholders = tuple(placeholders)
        parts = []
        if self.variables:
            parts.append("variables " + ", ".join(repr(v) for v in self.variables))
        if self.placeholders:
            parts.append("placeholders " + ", ".join(repr(p) for p in self.placeholders))
        super().__init__(
            f"Prompt {prompt_name!r} needs {' and '.join(parts)}, missing from prompt_variables.",
            param="prompt_variables",
        )


class InvalidPromptVariables(InvalidPromptRequest):
    """A variable value cannot be used where the prompt puts it (e.g. a placeholder not a list)."""

    code = "invalid_prompt_variables"


class RequestCredentialsDisabled(InvalidPromptRequest):
    """The body carries registry credentials but the middleware does not accept them."""

    code = "request_credentials_disabled"


class InvalidContentEncoding(PromptMiddlewareError):
    """A compressed request body that does not decompress (corrupt or truncated)."""

    status_code = 400
    code = "invalid_content_encoding"
    error_type = "invalid_request_error"


class UnsupportedContentEncoding(PromptMiddlewareError):
    """A body on a guarded path in a coding the middleware cannot read (`br`, `zstd` without
    their decoder, stacked codings): refused rather than forwarded unexamined."""

    status_code = 415
    code = "unsupported_content_encoding"
    error_type = "invalid_request_error"


class MethodNotAllowed(PromptMiddlewareError):
    """A method spelled other than in capitals (`post`) on a guarded path: HTTP methods are
    case-sensitive, but HTTP clients behind send it upper-cased, past the middleware."""

    status_code = 405
    code = "method_not_allowed"
    error_type = "invalid_request_error"


class RequestTimeout(PromptMiddlewareError):
    """The request body did not arrive within `body_timeout` seconds."""

    status_code = 408
    code = "request_timeout"
    error_type = "invalid_request_error"


class InvalidApiKey(PromptMiddlewareError):
    """The gateway's client key is missing or wrong (the openai client's AuthenticationError)."""

    status_code = 401
    code = "invalid_api_key"
    error_type = "invalid_request_error"


class RequestTooLarge(PromptMiddlewareError):
    status_code = 413
    code = "request_too_large"
    error_type = "invalid_request_error"


class PromptNotFound(PromptMiddlewareError):
    """The registry has no prompt with that name, version or label."""

    status_code = 404
    code = "prompt_not_found"
    error_type = "invalid_request_error"


class RegistryUnavailable(PromptMiddlewareError):
    """The registry failed or timed out and no cached copy could be served."""

    status_code = 503
    code = "prompt_registry_unavailable"
    error_type = "server_error"


class RegistryAuthError(RegistryUnavailable):
    """The registry refused the credentials (HTTP 401/403): a configuration error, not a miss."""

    status_code = 502
    code = "prompt_registry_auth_failed"


class InvalidPrompt(PromptMiddlewareError):
    """The registry returned a prompt this library cannot use (wrong types, unknown kind)."""

    status_code = 502
    code = "invalid_prompt"
    error_type = "server_error"


def error_body(
    message: str, error_type: str, param: str | None, code: str
) -> dict[str, dict[str, str | None]]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}
