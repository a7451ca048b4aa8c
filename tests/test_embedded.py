"""The embedded Postgres helper never touches the user's default database by accident."""

from __future__ import annotations

import tempfile
from pathlib import Path

import asyncpg

from tidebase.embedded import default_data_dir, start_embedded


async def test_a_throwaway_server_without_a_folder_never_uses_the_default_one(monkeypatch):
    default = Path(tempfile.mkdtemp(prefix="tidebase-default-")) / "pgdata"
    monkeypatch.setenv("TIDEBASE_DATA_DIR", str(default))
    assert default_data_dir() == default

    url = start_embedded(throwaway=True)
    conn = await asyncpg.connect(url)
    try:
        data_dir = Path(await conn.fetchval("SHOW data_directory"))
    finally:
        await conn.close()
    # Its own temporary folder (stopped and deleted when the test process exits): deleting it
    # cannot delete the user's runs.
    assert data_dir.name == "pgdata" and data_dir.parent.name.startswith("tidebase-pg-")
    assert not default.exists()
