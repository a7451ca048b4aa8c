"""Shared fixtures: a real Postgres (embedded, throwaway) and SDK clients against it.

Set TIDEBASE_TEST_DATABASE_URL to run against another Postgres instead.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tidebase.aio import AsyncTidebase
from tidebase.embedded import start_embedded


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


@pytest.fixture
async def make_client(pg_url: str) -> AsyncIterator:
    """Factory for extra clients (e.g. a second worker); closes them after the test."""
    clients: list[AsyncTidebase] = []

    def make(**kwargs) -> AsyncTidebase:
        client = AsyncTidebase(kwargs.pop("url", pg_url), **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def tide(pg_url: str) -> AsyncIterator[AsyncTidebase]:
    client = AsyncTidebase(pg_url)
    yield client
    await client.close()


def new_run_id() -> str:
    return f"run_{uuid.uuid4().hex}"
