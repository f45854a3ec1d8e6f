"""Weighted label rollouts: which label of a prompt a request gets when it names none.

    {"support/triage": {"labels": {"production": 90, "candidate": 10}, "sticky": "user"}}

A request that names neither `prompt_version` nor `prompt_label` gets a label chosen by weight.
With a sticky key (the body's `user` field, or the `x-prompt-sticky-key` header) the choice is a
pure function of (prompt name, key): SHA-256, so every worker and replica agrees and a user stays
in their arm while the weights stay put. Without a key, each request is drawn at random.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from .errors import PromptNotFound
from .prompts import Prompt, PromptRef

__all__ = [
    "STICKY_HEADER",
    "Experiment",
    "check_experiments",
    "choose_label",
    "experiment_refs",
    "parse_experiments",
    "sticky_key",
]

STICKY_HEADER = b"x-prompt-sticky-key"
Sticky = Literal["user", "header"]
_SCALE = 2.0**64


@dataclass(frozen=True, slots=True)
class Experiment:
    """Labels of one prompt with their weights (any positive scale), and where the key comes from.

    `sticky="user"`: the body's `user` field, else the `x-prompt-sticky-key` header;
    `sticky="header"`: only the header.
    """

    labels: tuple[tuple[str, float], ...]
    sticky: Sticky = "user"

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError("an experiment needs at least one label")
        for label, weight in self.labels:
            if not isinstance(label, str) or not label:
                raise ValueError(f"experiment label {label!r} must be a non-empty string")
            if (
                isinstance(weight, bool)
                or not isinstance(weight, int | float)
                or not math.isfinite(weight)
                or weight < 0
            ):
                raise ValueError(f"weight of label {label!r} must be a number >= 0")
        if sum(weight for _, weight in self.labels) <= 0:
            raise ValueError("an experiment's weights must not all be 0")
        if self.sticky not in ("user", "header"):
            raise ValueError(f"sticky must be 'user' or 'header', not {self.sticky!r}")

    @classmethod
    def coerce(cls, name: str, value: Experiment | Mapping[str, Any]) -> Experiment:
        if isinstance(value, Experiment):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"experiments[{name!r}] must be a mapping")
        unknown = set(value) - {"labels", "sticky"}
        if unknown:
            raise ValueError(f"experiments[{name!r}] has unknown keys {sorted(unknown)}")
        labels = value.get("labels")
        if not isinstance(labels, Mapping):
            raise ValueError(f"experiments[{name!r}].labels must map labels to weights")
        try:
            return cls(tuple(labels.items()), value.get("sticky", "user"))
        except ValueError as exc:
            raise ValueError(f"experiments[{name!r}]: {exc}") from None


def parse_experiments(
    experiments: Mapping[str, Experiment | Mapping[str, Any]] | None,
) -> dict[str, Experiment]:
    """Validated experiments keyed by prompt name; ValueError names the bad entry."""
    return {name: Experiment.coerce(name, value) for name, value in (experiments or {}).items()}


def choose_label(
    ref_name: str, experiments: Mapping[str, Experiment], sticky_key: str | None
) -> str | None:
    """The label for a request for `ref_name` that named no version or label, or None if no
    experiment covers the prompt. Same (name, key) -> same label, in every process.
    """
    experiment = experiments.get(ref_name)
    if experiment is None:
        return None
    if sticky_key is None:
        point = random.random()
    else:
        digest = hashlib.sha256(f"{ref_name}\0{sticky_key}".encode("utf-8", "surrogatepass"))
        point = int.from_bytes(digest.digest()[:8], "big") / _SCALE
    total = sum(weight for _, weight in experiment.labels)
    target = point * total
    cumulative = 0.0
    for label, weight in experiment.labels:
        cumulative += weight
        if target < cumulative:
            return label
    # Rounding can leave `target` at the very top: the last label with weight gets it.
    return next(label for label, weight in reversed(experiment.labels) if weight > 0)


def sticky_key(
    experiment: Experiment, body: Mapping[str, Any], headers: Iterable[tuple[bytes, bytes]]
) -> str | None:
    """The request's sticky key for `experiment`, or None (then the choice is per request)."""
    if experiment.sticky == "user":
        user = body.get("user")
        if isinstance(user, str) and user:
            return user
    for name, value in headers:
        if name.lower() == STICKY_HEADER and value:
            return value.decode("latin-1")
    return None


def experiment_refs(experiments: Mapping[str, Experiment]) -> list[PromptRef]:
    """Every (prompt, label) an experiment may choose, e.g. to preload and check at startup."""
    return [
        PromptRef(name, label=label)
        for name, experiment in experiments.items()
        for label, weight in experiment.labels
        if weight > 0
    ]


class _Registry(Protocol):
    async def get_prompt(
        self, name: str, *, version: int | None = None, label: str | None = None
    ) -> Prompt: ...


async def check_experiments(experiments: Mapping[str, Experiment], registry: _Registry) -> None:
    """Fetch every label the experiments may choose (through a cache, this preloads them);
    `PromptNotFound` naming each label that has no prompt version, e.g. at startup."""
    missing = []
    for ref in experiment_refs(experiments):
        try:
            await registry.get_prompt(ref.name, label=ref.label)
        except PromptNotFound:
            missing.append(str(ref))
    if missing:
        raise PromptNotFound(
            "Experiments choose labels that no prompt version has: " + ", ".join(missing) + "."
        )
