#!/usr/bin/env bash
# Runs every benchmark in turn and keeps the output under benchmarks/results/<UTC time>/.
# Usage: bash benchmarks/run_all.sh [--quick]   (--quick: fewer rounds, no callgrind; ~2.5 min)
# Needs .venv (./scripts/test makes it), and for the server run Debian's wrk:
#   apt-get update && apt-get install -y wrk        (callgrind.py also needs valgrind)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
out="benchmarks/results/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
quick=false
if [ "${1:-}" = "--quick" ]; then quick=true; fi

run() {  # name, then the command; output to the terminal and to $out/name.md
    local name=$1
    shift
    echo
    echo "=== $name: $*"
    "$@" --json "$out/$name.json" | tee "$out/$name.md"
}

if $quick; then
    run inprocess $PY benchmarks/inprocess.py --rounds 9
    run server $PY benchmarks/server.py --rounds 3 --duration 2
    run gateway $PY benchmarks/gateway.py --rounds 1 --duration 2 --connections 1,32
    run cache_concurrency $PY benchmarks/cache_concurrency.py
    run observability $PY benchmarks/observability.py --rounds 9
    run observability_server $PY benchmarks/observability_server.py --rounds 3 --duration 2
else
    run inprocess $PY benchmarks/inprocess.py
    run server $PY benchmarks/server.py
    run gateway $PY benchmarks/gateway.py
    run cache_concurrency $PY benchmarks/cache_concurrency.py
    # Timed; its --callgrind mode (~8 min) is left to a run by hand.
    run observability $PY benchmarks/observability.py
    run observability_server $PY benchmarks/observability_server.py
    if command -v valgrind >/dev/null; then
        run callgrind $PY benchmarks/callgrind.py
    else
        echo "valgrind not installed: skipping benchmarks/callgrind.py"
    fi
fi
echo
echo "results in $out/"
