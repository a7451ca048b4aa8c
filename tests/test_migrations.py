"""Migrations: applied in order, recorded, idempotent, and safe when run concurrently."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tidebase import migrate


async def test_apply_twice_is_a_noop(fresh_db_url):
    conn = await asyncpg.connect(fresh_db_url)
    try:
        assert [m.version for m in await migrate.pending(conn)] == [
            m.version for m in migrate.load_migrations()
        ]
        first = await migrate.apply(conn)
        assert [m.version for m in first] == [m.version for m in migrate.load_migrations()]
        assert await migrate.apply(conn) == []
        assert await migrate.pending(conn) == []
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == [m.version for m in first]
    finally:
        await conn.close()


async def test_concurrent_migrators_do_not_collide(fresh_db_url):
    conns = [await asyncpg.connect(fresh_db_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate.apply(c) for c in conns))
        applied = [m.version for result in results for m in result]
        assert sorted(applied) == sorted(m.version for m in migrate.load_migrations())
        count = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
        assert count == len(migrate.load_migrations())
    finally:
        for c in conns:
            await c.close()


async def test_edited_applied_migration_is_detected(fresh_db_url, tmp_path):
    src = migrate.load_migrations()
    for m in src:
        (tmp_path / m.path.name).write_text(m.sql)
    conn = await asyncpg.connect(fresh_db_url)
    try:
        await migrate.apply(conn, tmp_path)
        first = src[0]
        (tmp_path / first.path.name).write_text(first.sql + "\n-- edited\n")
        with pytest.raises(RuntimeError, match="changed after it was applied"):
            await migrate.apply(conn, tmp_path)
    finally:
        await conn.close()


async def test_bad_file_names_are_refused(tmp_path):
    (tmp_path / "1-bad.sql").write_text("SELECT 1")
    with pytest.raises(ValueError, match=r"NNN_name\.sql"):
        migrate.load_migrations(tmp_path)


async def test_unreachable_database_error_names_url_without_password():
    from tidebase import AsyncTidebase, StoreUnavailable

    client = AsyncTidebase("postgresql://user:s3cret@127.0.0.1:1/db")
    with pytest.raises(StoreUnavailable) as info:
        await client.run("wf", lambda run, _: 1)
    assert "127.0.0.1:1" in str(info.value)
    assert "s3cret" not in str(info.value)
