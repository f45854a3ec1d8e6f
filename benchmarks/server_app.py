"""ASGI apps for `server.py`: the bare app, and the middleware in front of the same app.

uvicorn --app-dir benchmarks server_app:bare
uvicorn --app-dir benchmarks server_app:middleware
"""

from __future__ import annotations

from _workload import BareApp, make_middleware

bare = BareApp()
middleware = make_middleware(BareApp())
