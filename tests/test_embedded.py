"""The embedded Postgres helper never touches the user's default database by accident."""

from __future__ import annotations

import tempfile
from pathlib import Path

import asyncpg
import pytest

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


def test_a_database_url_that_is_not_postgres_is_refused_naming_the_variable(monkeypatch):
    from tidebase import ConfigurationError
    from tidebase.embedded import configured_database_url, resolve_database_url

    monkeypatch.delenv("TIDEBASE_DATABASE_URL", raising=False)
    monkeypatch.setenv("TIDEBASE_URL", "http://localhost:7373")  # a server: not a database
    monkeypatch.setenv("DATABASE_URL", "http://user:secret@db.example/x")
    with pytest.raises(ConfigurationError, match="DATABASE_URL must be a postgresql:// URL") as e:
        resolve_database_url()
    assert "secret" not in str(e.value)
    monkeypatch.setenv("DATABASE_URL", "postgresql://db.example/x")
    assert configured_database_url() == "postgresql://db.example/x"
    monkeypatch.setenv("TIDEBASE_DATABASE_URL", "mysql://db.example/x")
    with pytest.raises(ConfigurationError, match="TIDEBASE_DATABASE_URL"):
        configured_database_url()


def test_a_malformed_url_still_has_its_password_hidden():
    from tidebase.embedded import redact_url

    assert redact_url("http://u:s3cr3t@[::1") == "http://u:***@[::1"  # urlsplit refuses it
    assert redact_url("postgresql://u:s3cr3t@db/x") == "postgresql://u:***@db/x"
    assert redact_url("postgresql://db/x") == "postgresql://db/x"
