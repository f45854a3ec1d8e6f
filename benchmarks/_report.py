"""Statistics and table printing shared by the benchmark scripts."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["Spread", "machine_info", "print_machine", "spread", "table", "write_json"]


@dataclass(frozen=True)
class Spread:
    """Median and interquartile range of a sample."""

    median: float
    q1: float
    q3: float
    n: int

    def fmt(self, digits: int = 2, unit: str = "") -> str:
        return f"{self.median:.{digits}f}{unit} [{self.q1:.{digits}f}–{self.q3:.{digits}f}]"

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "q1": self.q1, "q3": self.q3, "n": self.n}


def spread(values: Sequence[float]) -> Spread:
    if len(values) == 1:
        return Spread(values[0], values[0], values[0], 1)
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return Spread(statistics.median(values), q1, q3, len(values))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def _library() -> str:
    import prompt_middleware

    return str(Path(prompt_middleware.__file__).resolve().parent)


def machine_info() -> dict[str, Any]:
    return {
        "library": _library(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "packages": {
            d: _version(d)
            for d in ("prompt-middleware", "anyio", "trio", "starlette", "uvicorn", "langfuse")
        },
    }


def print_machine(info: dict[str, Any]) -> None:
    load = info["loadavg"]
    load_s = " ".join(f"{x:.2f}" for x in load) if load else "-"
    pkgs = ", ".join(f"{k} {v}" for k, v in info["packages"].items())
    print(
        f"# {info['date']} | nproc {info['nproc']} | CPU {info['cpu']} | "
        f"{info['implementation']} {info['python']} | Linux {info['kernel']} | load {load_s}"
    )
    print(f"# {pkgs}; library at {info['library']}")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: int = 2) -> str:
    """A GitHub-markdown table; columns from index `right` on are right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        out = [
            c.rjust(w) if i >= right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(out) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if i >= right else ("-" * (w + 2)) for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"\nraw results written to {target}")
