"""FileRegistry seen through the middleware: confinement, malformed files, a hung file system.

Nothing outside the directory is served (traversal, absolute paths, symlinks out); a malformed
file is a 502 naming it; a read that never returns is cut off by the cache's `fetch_timeout`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from prompt_middleware import (
    CachedRegistry,
    FileRegistry,
    PromptMiddleware,
)
from prompt_middleware.testing import CaptureApp, asgi_client

from .helpers import (
    openai_error,
    post,
)

pytestmark = pytest.mark.anyio


GREET_BODY = {"model": "m", "prompt_id": "greet", "prompt_variables": {"name": "A"}}


async def test_file_registry_serves_nothing_from_outside_its_directory(
    tmp_path: Path, capture: CaptureApp
) -> None:
    root = tmp_path / "prompts"
    (root / "team").mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("TOP-SECRET-TEXT")
    (root / "ok.txt").write_text("fine {{x}}")
    (root / "out.txt").symlink_to(tmp_path / "secret.txt")
    (root / "team" / "up").symlink_to(tmp_path, target_is_directory=True)
    mw = PromptMiddleware(capture, registry=FileRegistry(root))
    names = [
        "../secret",
        "team/../../secret",
        str(tmp_path / "secret"),
        "out",
        "team/up/secret",
        "secret\x00",
        "..\\secret",
        "ok/../../secret",
    ]
    async with asgi_client(mw) as client:
        for name in names:
            response = await client.post("/v1/chat/completions", json={"prompt_id": name})
            openai_error(response, 404, "prompt_not_found")
            assert "TOP-SECRET" not in response.text
        assert (await client.post("/v1/chat/completions", json={"prompt_id": "ok"})).is_success
    assert [call.json["messages"][0]["content"] for call in capture.requests] == ["fine {{x}}"]


async def test_malformed_prompt_file_is_502_naming_it(tmp_path: Path, capture: CaptureApp) -> None:
    (tmp_path / "broken.json").write_text('{"type": "chat", "prompt": [{"role": 1}]}')
    (tmp_path / "garbled.json").write_text("{not json")
    mw = PromptMiddleware(capture, registry=FileRegistry(tmp_path))
    for name in ("broken", "garbled"):
        err = openai_error(await post(mw, {"prompt_id": name}), 502, "invalid_prompt")
        assert f"'{name}'" in err["message"]


async def test_hung_file_system_is_cut_off_by_fetch_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capture: CaptureApp
) -> None:
    """FileRegistry reads in a worker thread; a read that never returns must not hang requests."""
    (tmp_path / "greet.txt").write_text("Hello {{name}}!")
    registry = FileRegistry(tmp_path)
    unblock = threading.Event()
    load = registry._load

    def hung_load(name: str) -> Any:
        unblock.wait(10)
        return load(name)

    monkeypatch.setattr(registry, "_load", hung_load)
    mw = PromptMiddleware(capture, registry=CachedRegistry(registry, fetch_timeout=0.2))
    try:
        with anyio.fail_after(3):
            err = openai_error(await post(mw, GREET_BODY), 503, "prompt_registry_unavailable")
        assert "timed out" in err["message"]
    finally:
        unblock.set()
