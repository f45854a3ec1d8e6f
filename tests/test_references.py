"""core/references.py: one reader per reference shape, validated once at the boundary."""

from __future__ import annotations

from typing import Any

import pytest

from prompt_middleware.core.errors import InvalidPromptRequest
from prompt_middleware.core.prompts import PromptRef
from prompt_middleware.core.references import ModelPrompt, PromptRequest, read_prompt_request

ALIASES = {"alias": ModelPrompt("bound", model="real", prompt_label="staging")}


def read(body: dict[str, Any]) -> PromptRequest | None:
    return read_prompt_request(body, ALIASES, allow_credentials=True)


def test_each_shape_gives_a_complete_request() -> None:
    fields = read({"prompt_id": "a", "prompt_version": 2, "prompt_variables": {"x": 1}})
    assert fields == PromptRequest(PromptRef("a", 2, None), {"x": 1})
    alias = read({"model": "alias", "prompt_variables": {"x": 1}})
    assert alias == PromptRequest(
        PromptRef("bound", None, "staging"), {"x": 1}, None, ALIASES["alias"]
    )
    image = {"type": "input_image", "image_url": "https://x/y.png"}
    hosted = read(
        {
            "prompt": {
                "id": "h",
                "version": "3",
                "variables": {"t": {"type": "input_text", "text": "T"}, "i": image},
            }
        }
    )
    assert hosted is not None
    assert hosted.ref == PromptRef("h", 3, None)
    assert hosted.variables["t"] == "T"
    (marker,) = hosted.parts
    assert hosted.variables["i"] == marker
    assert hosted.parts[marker].variable == "i"
    assert hosted.parts[marker].value == image


def test_an_explicit_prompt_id_wins_over_an_alias() -> None:
    request = read({"model": "alias", "prompt_id": "own"})
    assert request is not None
    assert request.ref == PromptRef("own")
    assert request.model_prompt is None


def test_prompt_fields_win_over_openais_prompt_object() -> None:
    request = read({"prompt_id": "own", "prompt": {"id": "other"}})
    assert request is not None
    assert request.ref.name == "own"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt_id": "x\ud800"}, "prompt_id"),
        ({"prompt_id": "a", "prompt_label": "\udfff"}, "prompt_label"),
        ({"prompt": {"id": "\ud800"}}, "prompt.id"),
        ({"prompt": {"id": "a", "version": 0}}, "prompt.version"),
        ({"prompt_id": "a", "prompt_version": True}, "prompt_version"),
        ({"prompt_id": "a", "prompt_version": 1, "prompt_label": "l"}, "prompt_label"),
    ],
)
def test_invalid_references_name_their_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidPromptRequest) as info:
        read(body)
    assert info.value.param == param


def test_openais_prompt_object_accepts_prompt_id_for_id() -> None:
    request = read({"prompt": {"prompt_id": "pmpt_1", "version": "2"}})
    assert request is not None
    assert request.ref == PromptRef("pmpt_1", 2, None)
    both = read({"prompt": {"id": "wins", "prompt_id": "other"}})
    assert both is not None
    assert both.ref.name == "wins"
    with pytest.raises(InvalidPromptRequest) as info:
        read({"prompt": {"prompt_id": 5}})
    assert info.value.param == "prompt.prompt_id"
