from __future__ import annotations

import pytest


# Explicit, so a missing trio fails loudly instead of silently dropping half the runs.
@pytest.fixture(params=["asyncio", "trio"], scope="session")
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
