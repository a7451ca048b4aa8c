"""Versioned SQL migrations: `migrations/NNN_name.sql`, applied in order under an advisory lock.

Each file runs in its own transaction and is recorded in `schema_migrations` with its checksum,
so applying twice is a no-op and two migrators racing each other apply every file once.
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg

# pg_advisory_lock key: a fixed 64-bit number derived from the name "tidebase.migrate".
_LOCK_KEY = int.from_bytes(hashlib.sha256(b"tidebase.migrate").digest()[:8], "big", signed=True)
_FILE_RE = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    path: Path
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir() -> Path:
    """The bundled migrations: the repository's `migrations/` or the installed copy."""
    candidates = [
        Path(__file__).resolve().parent.parent / "migrations",
        Path(sys.prefix) / "share" / "tidebase" / "migrations",
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"tidebase migrations not found in {candidates}")


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or migrations_dir()
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_RE.match(path.name)
        if not match:
            raise ValueError(f"migration file {path.name!r} is not named NNN_name.sql")
        found.append(Migration(match.group(1), match.group(2), path, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions in {directory}: {versions}")
    return found


_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


async def _applied(conn: asyncpg.Connection) -> dict[str, str]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
    return {r["version"]: r["checksum"] for r in rows}


async def pending(conn: asyncpg.Connection, directory: Path | None = None) -> list[Migration]:
    """Migrations not yet applied to this database."""
    applied = await _applied(conn)
    return [m for m in load_migrations(directory) if m.version not in applied]


async def apply(conn: asyncpg.Connection, directory: Path | None = None) -> list[Migration]:
    """Applies every pending migration in order; returns the ones this call applied."""
    migrations = load_migrations(directory)
    done: list[Migration] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(_CREATE_TABLE)
        applied = await _applied(conn)
        for migration in migrations:
            recorded = applied.get(migration.version)
            if recorded is not None:
                if recorded != migration.checksum:
                    raise RuntimeError(
                        f"migration {migration.path.name} was changed after it was applied "
                        "(checksum differs); add a new migration instead of editing an applied one"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            done.append(migration)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return done
