"""Helpers for queue, worker and reconciler tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import asyncpg

from tidebase.reconciler import Reconciler, ReconcilerSettings
from tidebase.store.postgres import PostgresStore


@contextlib.asynccontextmanager
async def reconciler(pg_url: str, **settings) -> AsyncIterator[Reconciler]:
    """A direct-mode reconciler over the test database (ticks on demand)."""
    store = await PostgresStore.connect(pg_url, min_size=1, max_size=4)
    rec = Reconciler(store, ReconcilerSettings(interval_ms=0, **settings))
    try:
        yield rec
    finally:
        await rec.close()
        await store.close()


async def run_row(pg_url: str, run_id: str) -> asyncpg.Record:
    conn = await asyncpg.connect(pg_url)
    try:
        return await conn.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)
    finally:
        await conn.close()


async def make_ready(pg_url: str, run_id: str) -> None:
    """Skips a requeued run's backoff (tests only)."""
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("UPDATE runs SET run_at = now() WHERE id = $1", run_id)
    finally:
        await conn.close()


async def eventually(predicate, timeout: float = 20.0, interval: float = 0.05):
    """Awaits `predicate()` (sync or async) until truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)
