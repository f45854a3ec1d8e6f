"""The middleware with metrics and tracing on, for `observability_server.py` (one process).

uvicorn --app-dir benchmarks _observed_app:app

Metrics on prometheus_client's global registry; spans on an SDK provider that batches them, as
the gateway's does, to an exporter that drops them (the SDK's cost, not the network's). The
access log is off: the target is about metrics and tracing.
"""

from __future__ import annotations

import os

from _workload import BareApp, make_middleware
from observability import DropSpans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

from prompt_middleware import observability

# BENCH_OBSERVE: which parts (for finding where the cost is); default both.
parts = os.environ.get("BENCH_OBSERVE", "metrics,tracing").split(",")
provider = TracerProvider()
if "simple" in parts:
    provider.add_span_processor(SimpleSpanProcessor(DropSpans()))
else:
    provider.add_span_processor(BatchSpanProcessor(DropSpans()))
observability.enable(
    metrics="metrics" in parts,
    tracing="tracing" in parts,
    access_log=False,
    tracer_provider=provider,
)
app = make_middleware(BareApp())
