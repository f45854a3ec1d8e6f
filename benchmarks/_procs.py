"""Processes for the benchmarks: a free port, pinning to a core, a clean stop, a wrk run."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterable

__all__ = ["cpu_seconds", "free_port", "pinned", "stop", "wrk_numbers", "wrk_script"]

_CLK_TCK = os.sysconf("SC_CLK_TCK")

_WRK_POST = """\
wrk.method = "POST"
local f = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
"""

_WRK_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d %d %d %d %d %d %d\\n", summary.requests,
    summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_script(headers: str) -> str:
    """A wrk script that POSTs the JSON body in the file `$BENCH_BODY_FILE` with these extra
    header lines (Lua), and ends with one line `BENCH requests duration_us connect read write
    status timeout p50_us p99_us`, which `wrk_numbers` reads."""
    return _WRK_POST + headers + _WRK_REPORT


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) process `pid` has used so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the ")" closing the command name: field 3 is index 0, utime (14) is index 11.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(core: int | None, argv: list[str]) -> list[str]:
    """`argv` run on `core` (taskset), or as is when no core is given."""
    return argv if core is None else ["taskset", "-c", str(core), *argv]


def stop(processes: Iterable[subprocess.Popen[bytes] | None], grace: float = 10.0) -> None:
    """Terminate every process still running, then wait for each; kill one that outlives `grace`."""
    started = [p for p in processes if p is not None]
    for process in started:
        if process.poll() is None:
            process.terminate()
    for process in started:
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wrk_numbers(
    argv: list[str], *, core: int | None, env: dict[str, str], timeout: float
) -> list[int]:
    """Run wrk (`argv`, pinned to `core`) with a script whose `done` prints one line
    `BENCH n n ...`; that line's numbers. `RuntimeError` if wrk fails or prints none."""
    out = subprocess.run(
        pinned(core, argv), check=False, env=env, capture_output=True, text=True, timeout=timeout
    )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    return [int(x) for x in line.split()[1:]]
