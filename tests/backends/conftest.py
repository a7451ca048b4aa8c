"""Fixtures of the real-backend suite: Prometheus (Debian) and Arize Phoenix, each started for
one test on free loopback ports and stopped after it, and worker processes that run the
research pipeline.

``TIDEBASE_BACKENDS_REPORT=DIR`` writes what the tests saw (the dashboard rendered as text, the
trace tree read back from Phoenix) into DIR; ``docs/see-your-runs.md`` shows such a run.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ._backends import Phoenix, PrometheusTools, phoenix_bin, prometheus_tools
from ._workers import Workers


@pytest.fixture(scope="session")
def prom_tools() -> PrometheusTools:
    return prometheus_tools()


@pytest.fixture(scope="session")
def phoenix_executable() -> Path:
    return phoenix_bin()


@pytest.fixture
def phoenix(phoenix_executable: Path, tmp_path: Path) -> Iterator[Phoenix]:
    server = Phoenix(phoenix_executable, tmp_path / "phoenix")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def report_dir() -> Path | None:
    raw = os.environ.get("TIDEBASE_BACKENDS_REPORT")
    if not raw:
        return None
    path = Path(raw)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
async def workers() -> AsyncIterator[Workers]:
    running = Workers()
    try:
        yield running
    finally:
        await running.close()
