"""InMemoryRegistry and FileRegistry: lookups, file formats, and staying inside the directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from prompt_middleware.core.errors import InvalidPrompt, PromptNotFound
from prompt_middleware.core.prompts import Prompt
from prompt_middleware.registries import FileRegistry, InMemoryRegistry, PromptRegistry

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "prompts"


def text(name: str, version: int, *labels: str, template: str = "x") -> Prompt:
    return Prompt(name=name, version=version, type="text", prompt=template, labels=labels)


def write(path: Path, content: str | bytes | Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content), encoding="utf-8")
    return path


async def not_found(registry: PromptRegistry, name: str, **ref: Any) -> PromptNotFound:
    with pytest.raises(PromptNotFound) as info:
        await registry.get_prompt(name, **ref)
    err = info.value
    assert err.status_code == 404
    assert err.code == "prompt_not_found"
    assert err.param == "prompt_id"
    return err


# --------------------------------------------------------------------------------------------
# InMemoryRegistry


@pytest.fixture
def memory() -> InMemoryRegistry:
    return InMemoryRegistry(
        [
            text("greet", 1, "production", template="v1"),
            text("greet", 3, "staging", template="v3"),
            text("greet", 2, "canary", template="v2"),
            text("solo", 4, template="only"),
            text("support/triage", 1, "production"),
        ]
    )


async def test_memory_registry_is_a_prompt_registry(memory: InMemoryRegistry) -> None:
    assert isinstance(memory, PromptRegistry)
    assert isinstance(FileRegistry(EXAMPLES), PromptRegistry)


@pytest.mark.parametrize(
    ("ref", "version"),
    [
        pytest.param({}, 1, id="default-is-production"),
        pytest.param({"label": "production"}, 1, id="production"),
        pytest.param({"label": "staging"}, 3, id="label"),
        pytest.param({"label": "canary"}, 2, id="other-label"),
        pytest.param({"label": "latest"}, 3, id="latest-is-highest"),
        pytest.param({"version": 2}, 2, id="version"),
        pytest.param({"version": 1, "label": "production"}, 1, id="version-and-its-label"),
        pytest.param({"version": 3, "label": "latest"}, 3, id="version-and-latest"),
    ],
)
async def test_memory_lookup(memory: InMemoryRegistry, ref: dict[str, Any], version: int) -> None:
    prompt = await memory.get_prompt("greet", **ref)
    assert (prompt.name, prompt.version, prompt.prompt) == ("greet", version, f"v{version}")


@pytest.mark.parametrize(
    ("name", "ref"),
    [
        pytest.param("nope", {}, id="unknown-name"),
        pytest.param("Greet", {}, id="case-sensitive"),
        pytest.param("greet", {"version": 9}, id="unknown-version"),
        pytest.param("greet", {"label": "prod"}, id="unknown-label"),
        pytest.param("greet", {"label": ""}, id="empty-label"),
        pytest.param("greet", {"version": 2, "label": "production"}, id="version-lacks-label"),
        pytest.param("greet", {"version": 1, "label": "latest"}, id="version-is-not-latest"),
        pytest.param("solo", {}, id="no-production-version"),
        pytest.param("support", {}, id="folder-is-not-a-prompt"),
    ],
)
async def test_memory_not_found(memory: InMemoryRegistry, name: str, ref: dict[str, Any]) -> None:
    err = await not_found(memory, name, **ref)
    assert repr(name) in err.message


async def test_memory_latest_ignores_a_stale_latest_label() -> None:
    registry = InMemoryRegistry([text("p", 1, "latest"), text("p", 2)])
    assert (await registry.get_prompt("p", label="latest")).version == 2
    assert (await registry.get_prompt("p", version=1)).version == 1
    await not_found(registry, "p", version=1, label="latest")


async def test_memory_label_on_several_versions_resolves_to_the_newest() -> None:
    registry = InMemoryRegistry([text("p", 5, "production"), text("p", 7, "production")])
    assert (await registry.get_prompt("p")).version == 7


async def test_memory_add_new_versions_and_replace_one() -> None:
    registry = InMemoryRegistry()
    await not_found(registry, "p")
    registry.add(text("p", 1, "production", template="a"))
    assert (await registry.get_prompt("p")).prompt == "a"
    registry.add(text("p", 2, template="b"))
    assert (await registry.get_prompt("p")).prompt == "a"
    assert (await registry.get_prompt("p", label="latest")).prompt == "b"
    registry.add(text("p", 1, template="a2"))  # same version: replaced, without its label now
    await not_found(registry, "p")
    assert (await registry.get_prompt("p", version=1)).prompt == "a2"


# --------------------------------------------------------------------------------------------
# FileRegistry: formats and names


@pytest.fixture
def root(tmp_path: Path) -> Path:
    directory = tmp_path / "prompts"
    directory.mkdir()
    return directory


def test_file_registry_needs_an_existing_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        FileRegistry(tmp_path / "missing")
    with pytest.raises(ValueError, match="does not exist"):
        FileRegistry(write(tmp_path / "file.json", {"prompt": "x"}))


@pytest.mark.parametrize("ext", [".txt", ".md"])
async def test_text_files(root: Path, ext: str) -> None:
    body = "Hello {{name}} — ünïcode\n\nsecond line"
    write(root / f"greet{ext}", body + "\n")
    prompt = await FileRegistry(root).get_prompt("greet")
    assert prompt == Prompt(
        name="greet", version=1, type="text", prompt=body, labels=("production",)
    )
    assert (await FileRegistry(root).get_prompt("greet", version=1)) == prompt
    assert (await FileRegistry(root).get_prompt("greet", label="latest")) == prompt
    assert prompt.compile({"name": "Ada"})[0]["content"].startswith("Hello Ada — ")


@pytest.mark.parametrize(
    ("content", "prompt"),
    [
        ("one line\n", "one line"),
        ("one line\r\n", "one line"),
        ("no newline", "no newline"),
        ("blank line kept\n\n", "blank line kept\n"),
        ("\n", ""),
    ],
)
async def test_text_file_loses_only_its_final_newline(
    root: Path, content: str, prompt: str
) -> None:
    (root / "t.txt").write_bytes(content.encode())
    assert (await FileRegistry(root).get_prompt("t")).prompt == prompt


async def test_json_single_object(root: Path) -> None:
    write(
        root / "greet.json",
        {
            "type": "chat",
            "prompt": [
                {"type": "chatmessage", "role": "system", "content": "{{a}}"},
                {"type": "placeholder", "name": "history"},
            ],
            "config": None,
            "tags": ["t"],
        },
    )
    prompt = await FileRegistry(root).get_prompt("greet")
    assert (prompt.name, prompt.version, prompt.type) == ("greet", 1, "chat")
    assert prompt.labels == ("production",)
    assert prompt.tags == ("t",)
    assert prompt.config == {}
    assert prompt.compile({"a": 1, "history": []}) == [{"role": "system", "content": "1"}]


async def test_json_with_a_utf8_bom_loads(root: Path) -> None:
    (root / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "caf\u00e9"}).encode())
    assert (await FileRegistry(root).get_prompt("bom")).prompt == "caf\u00e9"


async def test_a_bom_is_not_part_of_a_text_prompt(root: Path) -> None:
    (root / "bom.txt").write_bytes("\ufeffHello".encode())
    assert (await FileRegistry(root).get_prompt("bom")).prompt == "Hello"


async def test_json_object_keeps_its_version_and_labels(root: Path) -> None:
    write(root / "greet.json", {"prompt": "x", "version": 5, "labels": ["staging"]})
    registry = FileRegistry(root)
    prompt = await registry.get_prompt("greet")
    assert prompt.version == 5
    assert prompt.labels == ("staging", "production")
    assert await registry.get_prompt("greet", label="staging") == prompt
    await not_found(registry, "greet", version=1)


async def test_json_list_of_versions(root: Path) -> None:
    write(
        root / "greet.json",
        [
            {"version": 1, "prompt": "one", "labels": ["production"]},
            {"version": 3, "prompt": "three", "labels": []},
            {"version": 2, "prompt": "two", "labels": ["staging"]},
        ],
    )
    registry = FileRegistry(root)
    assert (await registry.get_prompt("greet")).prompt == "one"
    assert (await registry.get_prompt("greet", label="staging")).prompt == "two"
    assert (await registry.get_prompt("greet", label="latest")).prompt == "three"
    newest = await registry.get_prompt("greet", version=3)
    assert newest.labels == ()  # a version already has production: nothing added
    await not_found(registry, "greet", version=3, label="production")


async def test_without_production_the_highest_version_gets_it(root: Path) -> None:
    write(
        root / "greet.json",
        [
            {"version": 4, "prompt": "four", "labels": ["staging"]},
            {"version": 9, "prompt": "nine", "labels": ["beta"]},
            {"version": 6, "prompt": "six"},
        ],
    )
    registry = FileRegistry(root)
    default = await registry.get_prompt("greet")
    assert (default.version, default.labels) == (9, ("beta", "production"))
    assert (await registry.get_prompt("greet", version=6)).labels == ()
    assert (await registry.get_prompt("greet", version=4)).labels == ("staging",)


async def test_versions_default_to_their_position(root: Path) -> None:
    write(root / "greet.json", [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}])
    registry = FileRegistry(root)
    assert [(await registry.get_prompt("greet", version=v)).prompt for v in (1, 2, 3)] == [
        "a",
        "b",
        "c",
    ]
    assert (await registry.get_prompt("greet")).version == 3


@pytest.mark.parametrize("ext", [".yaml", ".yml"])
async def test_yaml_files(root: Path, ext: str) -> None:
    write(
        root / f"greet{ext}",
        """\
- version: 1
  type: text
  prompt: "Hi {{name}}"
- version: 2
  type: chat
  labels: [production]
  config:
    model: gpt-4o-mini
    temperature: 0.5
  prompt:
    - role: system
      content: |
        You greet {{ name }}.
    - type: placeholder
      name: history
""",
    )
    registry = FileRegistry(root)
    prompt = await registry.get_prompt("greet")
    assert prompt.version == 2
    assert prompt.model == "gpt-4o-mini"
    assert prompt.compile({"name": "Ada"}) == [{"role": "system", "content": "You greet Ada.\n"}]
    assert (await registry.get_prompt("greet", version=1)).prompt == "Hi {{name}}"


async def test_single_yaml_object(root: Path) -> None:
    write(root / "p.yaml", "prompt: just {{this}}\n")
    prompt = await FileRegistry(root).get_prompt("p")
    assert (prompt.type, prompt.prompt, prompt.labels) == ("text", "just {{this}}", ("production",))


async def test_folder_names(root: Path) -> None:
    write(root / "support" / "triage.json", {"name": "support/triage", "prompt": "t"})
    write(root / "a" / "b" / "c.md", "deep")
    registry = FileRegistry(root)
    prompt = await registry.get_prompt("support/triage")
    assert (prompt.name, prompt.prompt) == ("support/triage", "t")
    assert (await registry.get_prompt("a/b/c")).name == "a/b/c"
    await not_found(registry, "triage")
    await not_found(registry, "support")
    await not_found(registry, "a/b")


async def test_extension_order_and_names_with_extensions(root: Path) -> None:
    write(root / "p.txt", "from txt")
    write(root / "p.json", {"prompt": "from json"})
    write(root / "q.md", "from md")
    write(root / "q.yaml", "prompt: from yaml")
    registry = FileRegistry(root)
    assert (await registry.get_prompt("p")).prompt == "from json"
    assert (await registry.get_prompt("q")).prompt == "from yaml"
    await not_found(registry, "p.txt")
    await not_found(registry, "p.json")


async def test_files_are_read_on_each_lookup(root: Path) -> None:
    registry = FileRegistry(root)
    await not_found(registry, "p")
    write(root / "p.txt", "one")
    assert (await registry.get_prompt("p")).prompt == "one"
    write(root / "p.txt", "two")
    assert (await registry.get_prompt("p")).prompt == "two"


async def test_missing_version_or_label_in_a_file(root: Path) -> None:
    write(root / "p.txt", "x")
    registry = FileRegistry(root)
    await not_found(registry, "p", version=2)
    await not_found(registry, "p", label="staging")
    await not_found(registry, "p", version=1, label="staging")


@pytest.mark.parametrize(
    ("filename", "content"),
    [
        pytest.param("p.json", "{not json", id="invalid-json"),
        pytest.param("p.json", "", id="empty-json"),
        pytest.param("p.json", "[]", id="no-versions"),
        pytest.param("p.json", "5", id="number"),
        pytest.param("p.json", '"text"', id="string"),
        pytest.param("p.json", "null", id="null"),
        pytest.param("p.json", [{"prompt": "x"}, 3], id="non-object-version"),
        pytest.param("p.json", [{"prompt": "x"}, [{"prompt": "y"}]], id="nested-list"),
        pytest.param("p.json", {"type": "text"}, id="no-prompt"),
        pytest.param("p.json", {"type": "chat", "prompt": "x"}, id="chat-with-text"),
        pytest.param("p.json", {"type": "completion", "prompt": "x"}, id="unknown-type"),
        pytest.param("p.json", {"prompt": [{"role": "user"}]}, id="message-without-content"),
        pytest.param("p.json", {"prompt": [{"type": "placeholder"}]}, id="unnamed-placeholder"),
        pytest.param("p.json", {"prompt": "x", "version": "2"}, id="string-version"),
        pytest.param("p.json", {"prompt": "x", "version": 1.5}, id="float-version"),
        pytest.param("p.json", {"prompt": "x", "labels": "production"}, id="labels-string"),
        pytest.param("p.json", {"prompt": "x", "config": [1]}, id="config-list"),
        pytest.param("p.json", {"name": "other", "prompt": "x"}, id="other-name"),
        pytest.param("p.json", {"name": None, "prompt": "x"}, id="null-name"),
        pytest.param(
            "p.json",
            [{"version": 2, "prompt": "a"}, {"prompt": "b"}],
            id="same-version-twice",
        ),
        pytest.param("p.json", b'{"prompt": "caf\xe9"}', id="not-utf8-json"),
        pytest.param(
            "p.json",
            b'{"prompt": "x", "config": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            id="nested-past-the-recursion-limit",
        ),
        pytest.param("p.json", b'{"prompt": "x", "config": {"t": NaN}}', id="nan-in-config"),
        pytest.param("p.yaml", "prompt: x\nconfig: {t: .nan}\n", id="yaml-nan-in-config"),
        pytest.param("p.txt", b"caf\xe9", id="not-utf8-text"),
        pytest.param("p.yaml", "prompt: [unclosed", id="invalid-yaml"),
        pytest.param("p.yaml", "", id="empty-yaml"),
        pytest.param("p.yml", "just a string", id="yaml-scalar"),
        pytest.param("p.yml", "- 1\n- 2\n", id="yaml-list-of-numbers"),
        pytest.param("p.yaml", "prompt: x\nversion: 1.0\n", id="yaml-float-version"),
        pytest.param("p.yaml", "name: q\nprompt: x\n", id="yaml-other-name"),
    ],
)
async def test_malformed_files_are_invalid(root: Path, filename: str, content: Any) -> None:
    write(root / filename, content)
    with pytest.raises(InvalidPrompt) as info:
        await FileRegistry(root).get_prompt("p")
    assert info.value.status_code == 502
    assert info.value.code == "invalid_prompt"
    assert "'p'" in info.value.message


async def test_a_file_in_a_folder_must_declare_its_full_name(root: Path) -> None:
    write(root / "support" / "triage.json", {"name": "triage", "prompt": "x"})
    with pytest.raises(InvalidPrompt, match="triage"):
        await FileRegistry(root).get_prompt("support/triage")


# --------------------------------------------------------------------------------------------
# FileRegistry: names never leave the directory

SECRET = "TOP SECRET {{x}}"


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every path the registry reads (it reads with Path.read_text, in a worker thread)."""
    paths: list[Path] = []
    read_text, path_open = Path.read_text, Path.open

    def spy_read_text(self: Path, *args: Any, **kwargs: Any) -> str:
        paths.append(self)
        return read_text(self, *args, **kwargs)

    def spy_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        paths.append(self)
        return path_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", spy_read_text)
    monkeypatch.setattr(Path, "open", spy_open)
    return paths


@pytest.fixture
def jail(tmp_path: Path, root: Path) -> Path:
    """A prompt directory with secrets next to it and symlinks pointing in and out."""
    outside = tmp_path / "outside"
    for secret in (
        tmp_path / "secret.json",
        tmp_path / "secret.txt",
        outside / "p.json",
        outside / "p.txt",
    ):
        write(secret, {"prompt": SECRET} if secret.suffix == ".json" else SECRET)
    write(root / "greeting.txt", "hello")
    write(root / "support" / "triage.json", {"prompt": "triage"})
    write(root / "real.json", {"prompt": "real"})

    links = {
        root / "leak.json": tmp_path / "secret.json",  # absolute, out
        root / "relleak.txt": Path("..") / "secret.txt",  # relative, out
        root / "support" / "deep.txt": Path("..") / ".." / "secret.txt",  # out, from a folder
        root / "leakdir": outside,  # a directory, out
        root / "loop.json": root / "loop.json",  # a loop
        root / "dangling.json": root / "nothing-here.json",
        root / "alias.json": Path("real.json"),  # a file, in
        root / "absalias.txt": root / "greeting.txt",  # absolute, in
        root / "team": Path("support"),  # a directory, in
    }
    for link, target in links.items():
        try:
            link.symlink_to(target, target_is_directory=target.name in ("outside", "support"))
        except OSError:  # pragma: no cover - platforms without symlinks
            pytest.skip("symlinks are not available")
    return root


def outside(paths: list[Path], directory: Path) -> list[Path]:
    return [p for p in paths if not p.resolve().is_relative_to(directory.resolve())]


ESCAPES = [
    "../secret",
    "../outside/p",
    "support/../../secret",
    "a/../../secret",
    "support/../greeting",  # inside, but spelled with ..
    "./greeting",
    "support/./triage",
    "support//triage",
    "/greeting",
    "greeting/",
    "/",
    "",
    ".",
    "..",
    "...",
    "..\\secret",
    "support\\triage",
    "greeting\x00",
    "../secret\x00",
    "gree\x00ting",
    "leak",
    "relleak",
    "support/deep",
    "leakdir/p",
    "leakdir/../secret",
    "loop",
    "dangling",
]


@pytest.mark.parametrize("name", ESCAPES)
async def test_names_that_leave_the_directory_are_not_found_and_never_read(
    jail: Path, opened: list[Path], name: str
) -> None:
    registry = FileRegistry(jail)
    await not_found(registry, name)
    assert outside(opened, jail) == []


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("x" * 300, id="segment-too-long"),
        pytest.param("a/" * 3000 + "b", id="path-too-long"),
        pytest.param("\udc80", id="lone-surrogate"),
        pytest.param("support/\ud800triage", id="surrogate-in-folder"),
    ],
)
async def test_names_no_file_can_have_are_not_found(jail: Path, name: str) -> None:
    await not_found(FileRegistry(jail), name)


async def test_absolute_paths_are_not_names(jail: Path, tmp_path: Path, opened: list[Path]) -> None:
    registry = FileRegistry(jail)
    for name in (str(tmp_path / "secret"), str(jail / "greeting"), str(tmp_path / "outside/p")):
        await not_found(registry, name)
    assert opened == []


async def test_symlinks_inside_the_directory_work(jail: Path) -> None:
    registry = FileRegistry(jail)
    alias = await registry.get_prompt("alias")
    assert (alias.name, alias.prompt) == ("alias", "real")
    assert (await registry.get_prompt("absalias")).prompt == "hello"
    triage = await registry.get_prompt("team/triage")
    assert (triage.name, triage.prompt) == ("team/triage", "triage")


async def test_the_registry_works_through_a_symlinked_directory(jail: Path, tmp_path: Path) -> None:
    link = tmp_path / "link-to-prompts"
    link.symlink_to(jail, target_is_directory=True)
    registry = FileRegistry(link)
    assert (await registry.get_prompt("greeting")).prompt == "hello"
    await not_found(registry, "leak")
    await not_found(registry, "../secret")


async def test_no_escape_yields_the_secret(jail: Path) -> None:
    """Belt and braces: whatever the name, no lookup ever returns the secret text."""
    registry = FileRegistry(jail)
    names = [*ESCAPES, "secret", "outside/p", "p", "../../secret", "leakdir/../../secret"]
    for name in names:
        for ref in ({}, {"label": "latest"}, {"version": 1}):
            try:
                prompt = await registry.get_prompt(name, **ref)
            except PromptNotFound:
                continue
            assert SECRET not in str(prompt.prompt), name


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
async def test_unreadable_file_is_invalid(root: Path) -> None:  # pragma: no cover - not as root
    path = write(root / "p.txt", "x")
    path.chmod(0)
    with pytest.raises(InvalidPrompt):
        await FileRegistry(root).get_prompt("p")


# --------------------------------------------------------------------------------------------
# the shipped examples


def example_names() -> list[str]:
    return sorted(
        path.relative_to(EXAMPLES).with_suffix("").as_posix()
        for path in EXAMPLES.rglob("*")
        if path.is_file() and path.suffix in (".json", ".yaml", ".yml", ".txt", ".md")
    )


def test_the_examples_are_found() -> None:
    names = example_names()
    assert {"greeting", "summarize", "support/triage"} <= set(names)


@pytest.mark.parametrize("name", example_names())
async def test_every_example_prompt_resolves_and_compiles(name: str) -> None:
    registry = FileRegistry(EXAMPLES)
    default = await registry.get_prompt(name)
    latest = await registry.get_prompt(name, label="latest")
    assert default.name == latest.name == name
    assert "production" in default.labels
    assert latest.version >= default.version

    for version in range(1, latest.version + 1):  # every version the file holds
        try:
            prompt = await registry.get_prompt(name, version=version)
        except PromptNotFound:
            continue
        first = prompt.compile_result({})
        variables: dict[str, Any] = {n: f"<{n}>" for n in first.missing_variables}
        variables.update({n: [] for _, n in first.placeholders})
        result = prompt.compile_result(variables)
        assert result.missing_variables == ()
        assert result.placeholders == ()
        assert result.messages, name
        for message in result.messages:
            assert isinstance(message["role"], str)
            assert "{{" not in message["content"], (name, version, message)
