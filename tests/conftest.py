"""Shared fixtures: a real Postgres (embedded, throwaway) and SDK clients against it.

Set TIDEBASE_TEST_DATABASE_URL to run against another Postgres instead.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from tidebase.aio import AsyncTidebase
from tidebase.embedded import start_embedded
from tidebase.server import ServerConfig
from tidebase.server.background import BackgroundServer


@pytest.fixture(scope="session")
def pg_url() -> str:
    url = os.environ.get("TIDEBASE_TEST_DATABASE_URL")
    if url:
        return url
    url = start_embedded(Path(tempfile.mkdtemp(prefix="tidebase-test-")) / "pg", throwaway=True)
    print(f"\ntests use a throwaway embedded Postgres: {url}")
    return url


@pytest.fixture
async def fresh_db_url(pg_url: str) -> AsyncIterator[str]:
    """A new, empty database on the test server (for migration tests)."""
    name = f"tb_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg_url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    base, _, query = pg_url.partition("?")
    prefix = base.rsplit("/", 1)[0]
    yield f"{prefix}/{name}" + (f"?{query}" if query else "")
    conn = await asyncpg.connect(pg_url)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


@pytest.fixture(scope="session")
def tidebase_server(pg_url: str) -> Iterator[BackgroundServer]:
    """`tidebase serve` over the test Postgres, on a free loopback port (one per session)."""
    with BackgroundServer(ServerConfig(database_url=pg_url)) as server:
        yield server


@pytest.fixture(params=["direct", "server"])
def tidebase_url(request: pytest.FixtureRequest, pg_url: str) -> str:
    """The mode under test: the Postgres URL (direct), or the server's http:// URL.

    Every test using `tide` or `make_client` runs in both modes; both fixtures of one test
    share the mode. Tests that inspect the database itself use `pg_url`.
    """
    if request.param == "direct":
        return pg_url
    return request.getfixturevalue("tidebase_server").url


@pytest.fixture
async def make_client(tidebase_url: str) -> AsyncIterator:
    """Factory for extra clients (e.g. a second worker); closes them after the test."""
    clients: list[AsyncTidebase] = []

    def make(**kwargs) -> AsyncTidebase:
        client = AsyncTidebase(kwargs.pop("url", tidebase_url), **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def tide(tidebase_url: str) -> AsyncIterator[AsyncTidebase]:
    client = AsyncTidebase(tidebase_url)
    yield client
    await client.close()


def new_run_id() -> str:
    return f"run_{uuid.uuid4().hex}"
