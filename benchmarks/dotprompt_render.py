"""How long a `.prompt` file's render holds the event loop, next to a Langfuse-style prompt's.

    .venv/bin/python benchmarks/dotprompt_render.py

Prints microseconds per render (median of rounds, `thread_time`, GC off) for the same system +
user prompt written both ways, and a thread hop (`anyio.to_thread.run_sync` of a no-op) for
scale: a render is pure CPU, so a thread would add the hop and not free the loop under the GIL.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from prompt_middleware import FileRegistry, Prompt

DOTPROMPT = """---
model: gpt-4o-mini
config: {temperature: 0.2}
input:
  schema:
    customer: string
    dish?: string
  default:
    dish: soup
---
{{role "system"}}
You are a restaurant server confirming an order. Be polite and brief.
{{history}}
{{role "user"}}
Please confirm the order for {{customer}}: {{dish}}.
"""
LANGFUSE = Prompt(
    name="order",
    version=1,
    type="chat",
    prompt=(
        {"role": "system", "content": "You are a restaurant server confirming an order."},
        {"type": "placeholder", "name": "history"},
        {"role": "user", "content": "Please confirm the order for {{customer}}: {{dish}}."},
    ),
)
VARIABLES = {"customer": "Ada", "dish": "tartine"}


def per_call_us(function: Callable[[], object], rounds: int = 15, calls: int = 200) -> float:
    samples = []
    gc.disable()
    try:
        for _ in range(rounds):
            start = time.thread_time()
            for _ in range(calls):
                function()
            samples.append((time.thread_time() - start) / calls * 1e6)
    finally:
        gc.enable()
    return statistics.median(samples)


def write_prompt(folder: str) -> None:
    Path(folder, "order.prompt").write_text(DOTPROMPT, encoding="utf-8")


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        write_prompt(folder)
        dotprompt = await FileRegistry(folder).get_prompt("order")
    hop_samples = []
    for _ in range(200):
        start = time.perf_counter()
        await anyio.to_thread.run_sync(lambda: None)
        hop_samples.append((time.perf_counter() - start) * 1e6)
    dotprompt_us = per_call_us(lambda: dotprompt.compile_result(VARIABLES))
    langfuse_us = per_call_us(lambda: LANGFUSE.compile_result(VARIABLES))
    print(f"dotprompt render:       {dotprompt_us:8.1f} us")
    print(f"Langfuse-style render:  {langfuse_us:8.1f} us")
    print(f"thread hop (no work):   {statistics.median(hop_samples):8.1f} us")


if __name__ == "__main__":
    anyio.run(main)
