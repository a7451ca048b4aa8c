"""Fixtures for the HTTP API tests: real servers (uvicorn on loopback sockets) over the test
Postgres, and plain HTTP clients that speak the wire API as a 0.7 client would."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from tidebase.server import ServerConfig
from tidebase.server.background import BackgroundServer

from .wire_client import API_KEY


def _config(pg_url: str, **overrides: Any) -> ServerConfig:
    settings: dict[str, Any] = {"database_url": pg_url, "lease_ms": 60_000, "sse_keepalive_s": 1.0}
    settings.update(overrides)
    return ServerConfig(**settings)


@pytest.fixture(scope="session")
def server(pg_url: str) -> Iterator[BackgroundServer]:
    """An open server (no API key)."""
    with BackgroundServer(_config(pg_url, max_body_bytes=256 * 1024)) as running:
        yield running


@pytest.fixture(scope="session")
def replica(pg_url: str) -> Iterator[BackgroundServer]:
    """A second server process-equivalent on the same database (its own pool and LISTEN)."""
    with BackgroundServer(_config(pg_url)) as running:
        yield running


@pytest.fixture(scope="session")
def secured_server(pg_url: str) -> Iterator[BackgroundServer]:
    """A server that requires API_KEY."""
    with BackgroundServer(_config(pg_url, api_key=API_KEY)) as running:
        yield running


@pytest.fixture
async def api(server: BackgroundServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_url)
    yield conn
    await conn.close()
