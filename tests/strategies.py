"""Hypothesis strategies shared by the property tests: JSON values, request bodies, prompts.

Examples are bounded (`bounded(n)`) so each property takes seconds; `deadline=None` for slow
machines.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from prompt_middleware.core.errors import (
    PromptMiddlewareError,
)
from prompt_middleware.core.references import CREDENTIAL_FIELDS, PROMPT_FIELDS, ModelPrompt
from prompt_middleware.core.rewrite import RewriteOptions

from .helpers import (
    chat_prompt,
    text_prompt,
)


def bounded(examples: int) -> Callable[[Any], Any]:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- strategies -----------------------------------------------------------------------------------


TRICKY = [
    "",
    "{{",
    "}}",
    "{{name}}",
    "{{ name }}",
    "{{history}}",
    "\x00",
    "\ud800",
    "\udfff",
    "é",
    "🙂",
    "\u2028",
    "prompt_id",
    "langfuse_secret_key",
    "\x00part:deadbeef\x00",
]


ANY_CHAR = st.characters(exclude_categories=())  # surrogates included


TEXT = st.one_of(st.text(ANY_CHAR, max_size=12), st.sampled_from(TRICKY))


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)


JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(TEXT, children, max_size=4)
    ),
    max_leaves=12,
)


ROLES = st.sampled_from(["system", "user", "assistant", "tool"])


MESSAGES = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {
                "role": ROLES,
                "content": st.one_of(TEXT, st.none(), st.lists(JSON_VALUES, max_size=2)),
            },
            optional={"name": TEXT, "tool_calls": JSON_VALUES},
        ),
        JSON_VALUES,
    ),
    max_size=3,
)


PARTS = st.one_of(
    st.fixed_dictionaries({"type": st.just("input_text"), "text": st.one_of(TEXT, JSON_VALUES)}),
    st.fixed_dictionaries(
        {"type": st.just("input_image")},
        optional={"image_url": st.one_of(TEXT, JSON_VALUES), "detail": JSON_VALUES},
    ),
    st.fixed_dictionaries(
        {"type": st.just("input_file")},
        optional={"file_id": TEXT, "file_data": JSON_VALUES, "filename": TEXT},
    ),
)


VARIABLE_NAMES = st.one_of(st.sampled_from(["name", "history", "a", "b", "product"]), TEXT)


VARIABLES = st.dictionaries(VARIABLE_NAMES, st.one_of(JSON_VALUES, MESSAGES, PARTS), max_size=5)


PROMPT_NAMES = st.sampled_from(["greet", "support", "two-slots", "configured", "nope", ""])


def either(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly valid values for a field, sometimes anything at all."""
    return st.one_of(valid, valid, valid, JSON_VALUES)


FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "prompt_id": either(PROMPT_NAMES),
    "prompt_variables": either(VARIABLES),
    "prompt_version": either(st.integers(min_value=-1, max_value=3)),
    "prompt_label": either(st.sampled_from(["production", "latest", "staging", ""])),
    "prompt": either(
        st.fixed_dictionaries(
            {"id": either(PROMPT_NAMES)},
            optional={
                "version": either(st.sampled_from([1, "1", "02", 0, "x", "9" * 30])),
                "variables": either(VARIABLES),
            },
        )
    ),
    "langfuse_public_key": TEXT,
    "langfuse_secret_key": TEXT,
    "langfuse_secret": TEXT,
    "langfuse_host": TEXT,
    "model": either(st.sampled_from(["m", "langfuse/gpt-4o", "alias"])),
    "messages": either(MESSAGES),
    "input": either(st.one_of(TEXT, MESSAGES)),
    "temperature": JSON_VALUES,
    "tools": JSON_VALUES,
}


CHANCES = {"prompt_id": 15, "prompt_variables": 12, "model": 10, "messages": 10, "input": 8}


CHANCES |= {"prompt": 6, "prompt_version": 3, "prompt_label": 3, "temperature": 4, "tools": 4}

CHANCES |= dict.fromkeys(CREDENTIAL_FIELDS, 1)


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(st.dictionaries(TEXT, JSON_VALUES, max_size=3))
    # A fair die: hypothesis' own integers and samples lean towards their first values.
    die = draw(st.randoms(use_true_random=True))
    for key, chance in CHANCES.items():
        if die.randrange(20) < chance:
            body[key] = draw(FIELDS[key])
    return body


# --- what the generated requests refer to ---------------------------------------------------------


FUZZ_PROMPTS = {
    p.name: p
    for p in [
        text_prompt("greet", "Hello {{name}}, {{ a }}{{b}}!"),
        chat_prompt(
            "support",
            [
                {"role": "system", "content": "You help with {{product}} {{name}}."},
                {"type": "placeholder", "name": "history"},
            ],
        ),
        chat_prompt(
            "two-slots",
            [
                {"type": "placeholder", "name": "a"},
                {"role": "user", "content": "{{b}}"},
                {"type": "placeholder", "name": "b"},
            ],
        ),
        text_prompt(
            "configured",
            "{{name}}",
            config={"model": "real", "temperature": 0.5, "tools": [], "max_output_tokens": 9},
        ),
    ]
}


MODEL_PROMPTS = {"alias": ModelPrompt("support", model="gpt-real")}


OPTIONS = st.builds(
    RewriteOptions,
    strict_variables=st.booleans(),
    client_messages=st.sampled_from(["replace", "append"]),
    text_role=st.sampled_from(["user", "system"]),
)


STRIPPED = frozenset((*PROMPT_FIELDS, *CREDENTIAL_FIELDS))


def assert_sendable(error: PromptMiddlewareError) -> None:
    """Everything `send_error` does with it works: a 4xx/5xx JSON body."""
    assert 400 <= error.status_code < 600
    body = json.dumps(error.to_dict(), ensure_ascii=False).encode()
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
