"""A fake Langfuse public API (`GET /api/public/v2/prompts/{name}`, and the paginated list
`GET /api/public/v2/prompts`) for tests.

Raw ASGI, so it sees `raw_path` (a folder name's `%2F` must not be split). Serve it with
`tests.servers.running_server` or `running_fake()`:

    fake = FakeLangfuse()
    fake.add_prompt("pk-a", "sk-a", "greeting", "Hello {{name}}")          # v1, production
    fake.add_prompt("pk-a", "sk-a", "greeting", "Hi", labels=["staging"])  # v2
    with running_fake(fake) as url:
        ...
    fake.requests        # every request seen, oldest first (SeenRequest)
    fake.fail_next(2, 503)                             # the next 2 requests fail
    fake.fail_next(1, 429, headers={"retry-after": "0"})
    fake.fail_next(1, 200, body=b"not json")           # any status, raw or JSON body
    fake.delay = 5.0     # answer after 5 s (cut short by release(), reset(), leaving the server)

Also served: `GET /api/public/v2/prompts` (the prompt list, filtered by `fromUpdatedAt`, paged by
`page`/`limit`, with `meta`) and `GET /api/public/projects` (the keys' project, id
`project-<public key>`). A version's `updatedAt` is when it was added or its labels last moved.

Behaviour follows Langfuse: HTTP Basic `public_key:secret_key` selects the project (401
otherwise); `?version=N`, `?label=L`, or neither for the `production` label; both -> 400;
`latest` always names the newest version; a label set on a new version moves off older ones.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import threading
import urllib.parse
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.types import Receive, Scope, Send

from prompt_middleware._asgi import answer_lifespan, read_body

from .servers import running_server

__all__ = [
    "OTEL_TRACES_PATH",
    "PROMPTS_PATH",
    "FakeLangfuse",
    "OtelExport",
    "SeenRequest",
    "running_fake",
]

PROMPTS_PATH = "/api/public/v2/prompts/"
LIST_PATH = "/api/public/v2/prompts"
PROJECTS_PATH = "/api/public/projects"
OTEL_TRACES_PATH = "/api/public/otel/v1/traces"
_TIMESTAMP = "2025-01-01T00:00:00.000Z"


@dataclass(frozen=True)
class SeenRequest:
    method: str
    raw_path: str  # as sent, still percent-encoded
    query_string: str
    authorization: str | None
    public_key: str | None  # from the Basic credentials, if they parse
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-cased names, last wins

    @property
    def query(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.query_string, keep_blank_values=True))

    @property
    def prompt_name(self) -> str | None:
        if not self.raw_path.startswith(PROMPTS_PATH):
            return None
        return urllib.parse.unquote(self.raw_path[len(PROMPTS_PATH) :])


@dataclass(frozen=True)
class OtelExport:
    """One OTLP/HTTP export received at `OTEL_TRACES_PATH` (from a project's keys)."""

    public_key: str
    content_type: str
    body: bytes


@dataclass
class Fault:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | Any = None


class FakeLangfuse:
    """An in-memory Langfuse: projects keyed by (public_key, secret_key) -> name -> versions."""

    def __init__(self) -> None:
        self.projects: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
        self.requests: list[SeenRequest] = []
        self.otel: list[OtelExport] = []  # OTLP trace exports, oldest first
        self.delay = 0.0
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._releases = 0  # bumped by release(); a wait ends when it changes

    # -- configuring -------------------------------------------------------------------------

    def project(self, public_key: str, secret_key: str) -> dict[str, list[dict[str, Any]]]:
        """The project for these keys, created empty if new (its keys then authenticate)."""
        return self.projects.setdefault((public_key, secret_key), {})

    def add_prompt(
        self,
        public_key: str,
        secret_key: str,
        name: str,
        prompt: str | Sequence[Mapping[str, Any]],
        *,
        type: str | None = None,
        labels: Iterable[str] = ("production",),
        config: Any = None,
        tags: Iterable[str] = (),
        commit_message: str | None = None,
        updated_at: str | None = None,
    ) -> dict[str, Any]:
        """Add the next version of `name`; returns the body Langfuse would serve for it."""
        versions = self.project(public_key, secret_key).setdefault(name, [])
        labels = [label for label in labels if label != "latest"]
        updated = updated_at or _now()
        for older in versions:
            kept = [label for label in older["labels"] if label not in labels and label != "latest"]
            if kept != older["labels"]:
                older["updatedAt"] = updated
            older["labels"] = kept
        if not isinstance(prompt, str):
            prompt = [
                dict(m) if m.get("type") == "placeholder" else {"type": "chatmessage", **m}
                for m in prompt
            ]
        body = {
            "id": f"prompt-{len(versions) + 1}-{name}",
            "createdAt": _TIMESTAMP,
            "updatedAt": updated,
            "projectId": f"project-{public_key}",
            "createdBy": "API",
            "name": name,
            "version": len(versions) + 1,
            "type": type or ("text" if isinstance(prompt, str) else "chat"),
            "prompt": prompt,
            "config": config,
            "labels": [*labels, "latest"],
            "tags": list(tags),
            "commitMessage": commit_message,
            "resolutionGraph": None,
        }
        versions.append(body)
        return body

    def fail_next(
        self,
        count: int = 1,
        status: int = 503,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | Any = None,
    ) -> None:
        """Answer the next `count` requests with `status` (JSON `body`, or raw bytes)."""
        with self._lock:
            self._faults.extend(Fault(status, headers or {}, body) for _ in range(count))

    def release(self) -> None:
        """End every `delay` in progress at once."""
        with self._lock:
            self._releases += 1

    def reset(self) -> None:
        with self._lock:
            self.projects.clear()
            self.requests.clear()
            self.otel.clear()
            self._faults.clear()
            self.delay = 0.0
        self.release()

    @property
    def request_count(self) -> int:
        return len(self.requests)

    # -- serving -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        assert scope["type"] == "http"
        if scope["path"] == OTEL_TRACES_PATH and scope["method"] == "POST":
            status, headers, body = await self._ingest_otel(scope, receive)
        else:
            status, headers, body = await self._respond(scope)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-length", str(len(body)).encode()),
                    *((k.lower().encode(), v.encode()) for k, v in headers.items()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _respond(self, scope: Scope) -> tuple[int, dict[str, str], bytes]:
        raw_path = scope.get("raw_path") or scope["path"].encode()
        header_map = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        authorization = header_map.get("authorization")
        credentials = _basic_credentials(authorization)
        self.requests.append(
            SeenRequest(
                method=scope["method"],
                raw_path=raw_path.decode("ascii"),
                query_string=scope["query_string"].decode("ascii"),
                authorization=authorization,
                public_key=credentials[0] if credentials else None,
                headers=header_map,
            )
        )
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
        await self._wait()
        if fault is not None:
            if isinstance(fault.body, bytes):
                return fault.status, dict(fault.headers), fault.body
            body = fault.body if fault.body is not None else _error("InternalServerError", "fault")
            return fault.status, {"content-type": "application/json", **fault.headers}, _json(body)
        return self._serve(scope["method"], raw_path.decode("ascii"), scope, credentials)

    async def _ingest_otel(
        self, scope: Scope, receive: Receive
    ) -> tuple[int, dict[str, str], bytes]:
        """Langfuse's OTLP/HTTP endpoint: Basic auth with a project's keys, protobuf or JSON."""
        header_map = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        body = await read_body(receive) or b""
        credentials = _basic_credentials(header_map.get("authorization"))
        if credentials is None or credentials not in self.projects:
            return 401, {"content-type": "application/json"}, _json(_error("Unauthorized", "no"))
        content_type = header_map.get("content-type", "")
        self.otel.append(OtelExport(credentials[0], content_type, body))
        return 200, {"content-type": content_type or "application/x-protobuf"}, b""

    def _serve(
        self, method: str, raw_path: str, scope: Scope, credentials: tuple[str, str] | None
    ) -> tuple[int, dict[str, str], bytes]:
        json_headers = {"content-type": "application/json"}
        if raw_path in (LIST_PATH, PROJECTS_PATH):
            project = self.projects.get(credentials) if credentials else None
            if project is None or credentials is None:
                message = "Invalid credentials. Confirm that you've configured the correct host."
                return 401, json_headers, _json(_error("UnauthorizedError", message))
            if raw_path == PROJECTS_PATH:
                body = {
                    "data": [{"id": f"project-{credentials[0]}", "name": "fake", "metadata": {}}]
                }
                return 200, json_headers, _json(body)
            return _list(project, scope["query_string"].decode("ascii"))
        name = urllib.parse.unquote(raw_path[len(PROMPTS_PATH) :])
        if (
            not raw_path.startswith(PROMPTS_PATH)
            or not name
            or "/" in raw_path[len(PROMPTS_PATH) :]
        ):
            return 404, json_headers, _json(_error("NotFoundError", "Route not found"))
        if method != "GET":
            return 405, json_headers, _json(_error("MethodNotAllowedError", "Method not allowed"))
        project = self.projects.get(credentials) if credentials else None
        if project is None:
            message = "Invalid credentials. Confirm that you've configured the correct host."
            return 401, json_headers, _json(_error("UnauthorizedError", message))

        query = dict(urllib.parse.parse_qsl(scope["query_string"].decode("ascii")))
        version, label = query.get("version"), query.get("label")
        if version is not None and label is not None:
            message = "Cannot specify both version and label"
            return 400, json_headers, _json(_error("InvalidRequestError", message))
        if version is not None and not version.isdigit():
            return 400, json_headers, _json(_error("InvalidRequestError", "Invalid version"))

        versions = project.get(name, [])
        if version is not None:
            found = [p for p in versions if p["version"] == int(version)]
            missing = f"Prompt not found: '{name}' with version {version}"
        else:
            label = label or "production"
            found = [p for p in versions if label in p["labels"]]
            missing = f"Prompt not found: '{name}' with label '{label}'"
        if not found:
            return 404, json_headers, _json(_error("LangfuseNotFoundError", missing))
        return 200, json_headers, _json(found[-1])

    async def _wait(self) -> None:
        # Polls a counter: the test's event loop (maybe trio) is not this server's.
        deadline, releases = anyio.current_time() + self.delay, self._releases
        while anyio.current_time() < deadline and self._releases == releases:  # noqa: ASYNC110
            await anyio.sleep(0.01)


@contextmanager
def running_fake(fake: FakeLangfuse) -> Iterator[str]:
    """Serve `fake` on a loopback port; yields its base URL. Slow answers end at exit."""
    with running_server(fake) as url:
        try:
            yield url
        finally:
            fake.release()


def _list(
    project: dict[str, list[dict[str, Any]]], query_string: str
) -> tuple[int, dict[str, str], bytes]:
    """Langfuse's prompt list: one item per name, newest change first, paged."""
    json_headers = {"content-type": "application/json"}
    query = dict(urllib.parse.parse_qsl(query_string))
    try:
        page, limit = int(query.get("page", "1")), int(query.get("limit", "10"))
        since = _parse_time(query["fromUpdatedAt"]) if "fromUpdatedAt" in query else None
    except ValueError:
        return 400, json_headers, _json(_error("InvalidRequestError", "Invalid query"))
    items = []
    for name, every in project.items():
        if "name" in query and name != query["name"]:
            continue
        versions = [
            v
            for v in every
            if ("label" not in query or query["label"] in v["labels"])
            and ("tag" not in query or query["tag"] in v["tags"])
        ]
        changed = [v for v in versions if since is None or _parse_time(v["updatedAt"]) >= since]
        if not changed:
            continue
        last = max(versions, key=lambda v: _parse_time(v["updatedAt"]))
        items.append(
            {
                "name": name,
                "type": versions[-1]["type"],
                "versions": [v["version"] for v in versions],
                "labels": sorted({label for v in versions for label in v["labels"]}),
                "tags": versions[-1]["tags"],
                "lastUpdatedAt": last["updatedAt"],
                "lastConfig": versions[-1]["config"],
            }
        )
    items.sort(key=lambda item: item["lastUpdatedAt"], reverse=True)
    pages = max(1, -(-len(items) // limit)) if limit > 0 else 1
    chosen = items[(page - 1) * limit : page * limit] if limit > 0 else items
    meta = {"page": page, "limit": limit, "totalItems": len(items), "totalPages": pages}
    return 200, json_headers, _json({"data": chosen, "meta": meta})


def _now() -> str:
    text = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    if not authorization or not authorization.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    public_key, sep, secret_key = decoded.partition(":")
    return (public_key, secret_key) if sep else None


def _error(error: str, message: str) -> dict[str, str]:
    return {"message": message, "error": error}


def _json(body: Any) -> bytes:
    return json.dumps(body).encode()
