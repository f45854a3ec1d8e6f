"""The README's code snippets, run as written (paths pointed at examples/)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def snippet(marker: str) -> str:
    blocks: list[str] = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    (found,) = [b for b in blocks if marker in b]
    return found


def test_testing_section_snippet_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT / "examples")
    namespace: dict[str, Any] = {}
    exec(snippet("async def test_triage_prompt"), namespace)
    import anyio

    for backend in ("asyncio", "trio"):
        anyio.run(namespace["test_triage_prompt"], backend=backend)
