"""The event hub: it listens only while streams are open, and survives losing its connection."""

from __future__ import annotations

import asyncio

import asyncpg

from tidebase.server.hub import CHANNEL, EventHub


async def _listening_backends(conn: asyncpg.Connection) -> list[int]:
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE query LIKE $1", f"%LISTEN%{CHANNEL}%"
    )
    return [r["pid"] for r in rows]


async def test_listens_only_while_subscribed(pg_url: str) -> None:
    hub = EventHub(pg_url, idle_unlisten_s=0.1)
    await hub.start()
    try:
        assert not hub.listening
        async with hub.subscribe("run_a") as sub:
            assert hub.listening
            conn = await asyncpg.connect(pg_url)
            await conn.execute("SELECT pg_notify($1, 'run_a:1')", CHANNEL)
            await conn.execute("SELECT pg_notify($1, 'run_b:1')", CHANNEL)
            await conn.close()
            assert await sub.wait(5)
        await asyncio.sleep(0.5)
        assert not hub.listening
    finally:
        await hub.close()


async def test_reconnects_after_losing_the_connection(pg_url: str) -> None:
    hub = EventHub(pg_url, max_backoff_s=0.5)
    await hub.start()
    admin = await asyncpg.connect(pg_url)
    try:
        async with hub.subscribe("run_c") as sub:
            for pid in await _listening_backends(admin):
                await admin.execute("SELECT pg_terminate_backend($1)", pid)
            assert await sub.wait(5)  # woken to catch up with what it may have missed
            for _ in range(50):
                if hub.listening:
                    break
                await asyncio.sleep(0.1)
            assert hub.listening
            await admin.execute("SELECT pg_notify($1, 'run_c:7')", CHANNEL)
            assert await sub.wait(5)
    finally:
        await admin.close()
        await hub.close()


async def test_close_ends_open_streams(pg_url: str) -> None:
    hub = EventHub(pg_url)
    await hub.start()
    async with hub.subscribe("run_d") as sub:
        hub.close_streams()
        assert sub.closed and await sub.wait(1)
    await hub.close()
