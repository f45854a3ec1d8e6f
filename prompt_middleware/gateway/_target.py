"""Where `UpstreamProxy` sends a request: the upstream URL for a request target.

The rules keep every request under the configured base path, which is what an upstream key is
scoped to (a tenant, an Azure deployment):

* a path that is the base path, or starts with it and a `/`, as sent on the wire, is forwarded as
  is; any other path is joined under the base. So every upstream path under the base is reached
  by sending it exactly as the upstream knows it, `/v1/v1/x` included.
* a `.` or `..` segment is refused, in any spelling an upstream might decode into one: raw,
  percent-encoded (`%2e%2e`, `.%2E`, twice-encoded `%252e`), split by an encoded `/` or a `\\`
  (`..%2F`, `..\\`), or followed by path parameters (`..;x`). httpx resolves raw ones before
  sending (RFC 3986 §5.2.4), so a request could climb out of the base path. Resolving them here
  instead would not do either: the middleware in front matched the unresolved path, so
  `/v1/chat/completions/.` would reach the upstream's chat endpoint without having been examined.
* a fragment (`#`) is refused: a request target has none (RFC 9112 §3.2), and httpx cannot send
  one. So are control characters and a non-ASCII query, which httpx cannot put in a URL.

A refusal is `InvalidTarget`, which the proxy answers with a 400 before anything is sent upstream.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Final
from urllib.parse import unquote

import httpx

__all__ = ["InvalidTarget", "join", "split_credentials", "upstream_url", "without_userinfo"]

# Separators an upstream may split a decoded path at: `\` by Windows servers and some routers.
_SEPARATORS: Final = re.compile(r"[/\\]")
_DOT_SEGMENTS: Final = frozenset({".", ".."})
_USERINFO: Final = re.compile(r"(//)[^/?#]*@")


class InvalidTarget(ValueError):
    """A request target the proxy does not forward; the message is for the client."""


def split_credentials(
    url: httpx.URL, headers: Mapping[str, str] | None
) -> tuple[httpx.URL, tuple[bytes, bytes] | None]:
    """`url` without its userinfo, and the `Authorization: Basic` header it stood for.

    No header when `headers` already sets `Authorization`: the explicit one wins. Either way the
    userinfo leaves the URL, so no client, log line or error message built from it can show it.
    """
    if not url.userinfo:
        return url, None
    bare = url.copy_with(username=None, password=None)
    if any(name.lower() == "authorization" for name in headers or {}):
        return bare, None
    # As httpx's BasicAuth encodes it (UTF-8), the header it used to build from the URL.
    pair = f"{url.username}:{url.password}".encode()
    return bare, (b"authorization", b"Basic " + base64.b64encode(pair))


def without_userinfo(url: str) -> str:
    """`url` as text for a message, its userinfo (a credential) masked; works on bad URLs too."""
    return _USERINFO.sub(r"\1***@", url, count=1)


def join(base_raw: str, route_raw: str) -> str:
    """The upstream path for `route_raw` (percent-encoded, as received) under `base_raw`."""
    if base_raw and (route_raw == base_raw or route_raw.startswith(base_raw + "/")):
        return route_raw
    return base_raw + route_raw or "/"


def upstream_url(base: httpx.URL, base_raw: str, route_raw: str, query: bytes) -> httpx.URL:
    """The URL to forward to; `InvalidTarget` for a target that must not be forwarded."""
    if "#" in route_raw or b"#" in query:
        raise InvalidTarget(
            "The request target has a fragment ('#'), which HTTP requests do not carry."
        )
    _refuse_dot_segments(route_raw)
    path = join(base_raw, route_raw)
    try:
        target = path.encode("ascii") + (b"?" + query if query else b"")
        return base.copy_with(raw_path=target)
    except (httpx.InvalidURL, UnicodeError):
        raise InvalidTarget(
            "The request target holds characters that cannot be sent in a URL."
        ) from None


def _refuse_dot_segments(raw: str) -> None:
    if "." not in raw and "%" not in raw:
        return
    for segment in raw.split("/"):
        for part in _SEPARATORS.split(_decoded(segment)):
            # Servlet containers drop a segment's `;parameters` first, so `..;x` is `..` there.
            if part.partition(";")[0] in _DOT_SEGMENTS:
                raise InvalidTarget(
                    "The request path has a '.' or '..' segment (perhaps percent-encoded); "
                    "it is not forwarded."
                )


def _decoded(text: str) -> str:
    """`text` percent-decoded until nothing changes: what an upstream decoding twice sees."""
    while "%" in text:
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    return text
