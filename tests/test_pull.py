"""`prompt-middleware pull`: Langfuse prompts into a FileRegistry folder, and back out exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from prompt_middleware import FileRegistry, LangfuseRegistry
from prompt_middleware.core.errors import PromptNotFound
from prompt_middleware.gateway.pull import pull_prompts

from .fake_langfuse import FakeLangfuse

pytestmark = pytest.mark.anyio

PK, SK = "pk-lf-pull", "sk-lf-pull"
NAMES = [
    "greeting",
    "support/triage",
    "support/billing/refunds",
    "with space",
    "ünïcødé/名前",
    "emoji 🚀",
    "dots.in.name",
    "percent%2Fslash",
]


def fill(fake: FakeLangfuse) -> dict[str, int]:
    """Several versions per prompt, text and chat, labels moving, config, tags, messages."""
    counts = {}
    for i, name in enumerate(NAMES):
        fake.add_prompt(PK, SK, name, f"Hello {{{{name}}}} v1 {i}", commit_message="first")
        fake.add_prompt(
            PK,
            SK,
            name,
            [
                {"role": "system", "content": f"System {i} {{{{tone}}}}"},
                {"type": "placeholder", "name": "history"},
            ],
            labels=["staging"],
            config={"model": "gpt-4o-mini", "temperature": 0.1 * i},
            tags=["chat", f"t{i}"],
            commit_message="chat version",
        )
        counts[name] = 2
        if i % 2:
            fake.add_prompt(PK, SK, name, "third", labels=["production", "beta"], tags=["x"])
            counts[name] = 3
    # A prompt with no production version at all.
    fake.add_prompt(PK, SK, "unlabelled", "no label", labels=[])
    counts["unlabelled"] = 1
    return counts


def stamps(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*.json")}


def listing(root: Path, pattern: str = "*") -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(pattern))


def langfuse(url: str) -> LangfuseRegistry:
    return LangfuseRegistry(PK, SK, base_url=url, max_retries=0)


async def answers(registry: Any, name: str, **ref: Any) -> Any:
    try:
        prompt = await registry.get_prompt(name, **ref)
    except PromptNotFound:
        return "not found"
    return prompt, prompt.compile({"name": "Ada", "tone": "dry"})


async def test_every_name_version_and_label_round_trips(
    tmp_path: Path, clean_fake: FakeLangfuse, served: tuple[FakeLangfuse, str]
) -> None:
    counts = fill(clean_fake)
    async with langfuse(served[1]) as source:
        result = await pull_prompts(source, tmp_path, page_size=4)
        pages = [r for r in clean_fake.requests if r.raw_path == "/api/public/v2/prompts"]
        assert len(pages) == 3
        files = FileRegistry(tmp_path)
        assert sorted(result.written) == sorted(counts)
        labels = ["production", "staging", "beta", "latest", "nope"]
        for name, count in counts.items():
            for version in range(1, count + 2):
                assert await answers(files, name, version=version) == await answers(
                    source, name, version=version
                ), (name, version)
            for label in labels:
                assert await answers(files, name, label=label) == await answers(
                    source, name, label=label
                ), (name, label)
            assert await answers(files, name) == await answers(source, name), name
    assert (tmp_path / "support" / "billing" / "refunds.json").is_file()
    assert (tmp_path / "ünïcødé" / "名前.json").is_file()


async def test_several_pages(
    tmp_path: Path, clean_fake: FakeLangfuse, served: tuple[FakeLangfuse, str]
) -> None:
    for i in range(7):
        clean_fake.add_prompt(PK, SK, f"p{i}", f"text {i}")
    async with langfuse(served[1]) as source:
        listed = [e["name"] async for e in source.list_prompts(page_size=3)]
    # Every prompt once, across the pages; the order is Langfuse's (newest change first), which
    # for prompts added within one millisecond is the order they were added in.
    assert sorted(listed) == [f"p{i}" for i in range(7)]
    pages = [r.query["page"] for r in clean_fake.requests]
    assert pages == ["1", "2", "3"]


async def test_a_second_pull_rewrites_nothing(
    tmp_path: Path, clean_fake: FakeLangfuse, served: tuple[FakeLangfuse, str]
) -> None:
    fill(clean_fake)
    async with langfuse(served[1]) as source:
        await pull_prompts(source, tmp_path)
        before = stamps(tmp_path)
        os.utime(tmp_path / "greeting.json", ns=(1, 1))
        before[tmp_path / "greeting.json"] = 1
        again = await pull_prompts(source, tmp_path)
        assert again.written == []
        assert stamps(tmp_path) == before
        clean_fake.add_prompt(PK, SK, "greeting", "a new version")
        third = await pull_prompts(source, tmp_path)
    assert third.written == ["greeting"]
    assert listing(tmp_path, ".pull-*") == []


async def test_named_prompts_and_a_label(
    tmp_path: Path, clean_fake: FakeLangfuse, served: tuple[FakeLangfuse, str]
) -> None:
    fill(clean_fake)
    async with langfuse(served[1]) as source:
        result = await pull_prompts(
            source, tmp_path, names=["support/triage", "absent"], label="staging"
        )
        assert (result.written, result.missing) == (["support/triage"], ["absent"])
        files = FileRegistry(tmp_path)
        pulled = await files.get_prompt("support/triage", label="staging")
        served_prompt = await source.get_prompt("support/triage", label="staging")
        # Only the staging versions were pulled; with no production one among them, the newest
        # pulled is served to requests that name no label, as for any hand-written file.
        assert pulled.labels == ("staging", "production")
        assert pulled.compile({"tone": "x"}) == served_prompt.compile({"tone": "x"})
        with pytest.raises(PromptNotFound):
            await files.get_prompt("support/triage", version=1)
    assert listing(tmp_path, "*.json") == ["support/triage.json"]


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "a/../../b", "a//b", "back\\slash"])
async def test_names_that_would_leave_the_folder_are_refused(
    tmp_path: Path, clean_fake: FakeLangfuse, served: tuple[FakeLangfuse, str], name: str
) -> None:
    clean_fake.add_prompt(PK, SK, name, "x")
    clean_fake.add_prompt(PK, SK, "fine", "y")
    root = tmp_path / "out"
    async with langfuse(served[1]) as source:
        result = await pull_prompts(source, root)
    assert (result.refused, result.written) == ([name], ["fine"])
    assert listing(tmp_path) == ["out", "out/fine.json"]


async def test_a_symlinked_folder_out_of_the_directory_is_refused(
    tmp_path: Path, clean_fake: FakeLangfuse, served: tuple[FakeLangfuse, str]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "out"
    root.mkdir()
    (root / "linked").symlink_to(outside)
    clean_fake.add_prompt(PK, SK, "linked/p", "x")
    async with langfuse(served[1]) as source:
        result = await pull_prompts(source, root)
    assert result.refused == ["linked/p"]
    assert list(outside.iterdir()) == []


def test_the_command_pulls_and_reports(
    tmp_path: Path, clean_fake: FakeLangfuse, served: tuple[FakeLangfuse, str]
) -> None:
    fill(clean_fake)
    env = {
        **os.environ,
        "LANGFUSE_PUBLIC_KEY": PK,
        "LANGFUSE_SECRET_KEY": SK,
        "LANGFUSE_HOST": served[1],
    }
    command = [sys.executable, "-m", "prompt_middleware", "pull", "--langfuse", "--to"]
    done = subprocess.run(
        [*command, str(tmp_path), "--name", "greeting", "--name", "with space"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "2 written, 0 unchanged" in done.stderr
    assert "\r" not in done.stderr  # no progress line when stderr is not a terminal
    assert SK not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["greeting.json", "with space.json"]
    missing = subprocess.run(
        [*command, str(tmp_path), "--name", "nope"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 1
    assert "no prompt 'nope'" in missing.stderr


def test_a_progress_line_on_a_terminal(
    tmp_path: Path, clean_fake: FakeLangfuse, served: tuple[FakeLangfuse, str]
) -> None:
    import pty

    fill(clean_fake)
    env = {
        **os.environ,
        "LANGFUSE_PUBLIC_KEY": PK,
        "LANGFUSE_SECRET_KEY": SK,
        "LANGFUSE_HOST": served[1],
    }
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "prompt_middleware",
                "pull",
                "--langfuse",
                "--to",
                str(tmp_path),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=follower,
            timeout=60,
            check=False,
        )
        os.close(follower)
        follower = -1
        output = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal is closed once everything is read
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    assert done.returncode == 0
    text = output.decode()
    assert f"pulled {len(NAMES) + 1}/{len(NAMES) + 1}" in text
    assert "\r" in text
