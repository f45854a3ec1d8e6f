"""Langfuse base URLs: parsed strictly, since they decide where credentials are sent."""

from __future__ import annotations

import re
import urllib.parse

__all__ = ["normalise_base_url", "origin_and_path", "split_url"]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNSAFE_URL_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


def split_url(url: str) -> tuple[str, str] | None:
    """(`scheme://host:port`, path without trailing slash) of a plain http(s) URL, else None.

    Anything unusual (credentials, query, fragment, whitespace, backslashes, a bad port or a
    malformed bracketed host such as `http://[::1`) is refused rather than interpreted.
    """
    if _UNSAFE_URL_CHARS.search(url) or "?" in url or "#" in url:
        return None
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or "@" in parts.netloc:
            return None
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
        host = parts.hostname
    except ValueError:  # urlsplit and .port refuse bad brackets and ports
        return None
    if not host:
        return None
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}", parts.path.rstrip("/")


def origin_and_path(base_url: str) -> tuple[str, str]:
    """`split_url` of a URL that `normalise_base_url` produced."""
    split = split_url(base_url)
    assert split is not None, "only called on normalised URLs"
    return split


def normalise_base_url(url: str) -> str:
    split = split_url(url) if isinstance(url, str) else None
    if split is None:
        # The URL is not echoed: it may carry credentials.
        raise ValueError(
            "The Langfuse base URL must be an http(s) URL without credentials, query or fragment."
        )
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.lower()}{split[1]}"
