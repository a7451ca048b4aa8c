"""Opening the server's database: connect, then migrate (or refuse while migrations are pending)."""

from __future__ import annotations

from tidebase import migrate
from tidebase.errors import ConfigurationError
from tidebase.store.wire import WireStore


class MigrationsPending(ConfigurationError):
    """TIDEBASE_AUTO_MIGRATE=0 and the database lacks migrations: the server does not start."""

    def __init__(self, names: list[str]):
        super().__init__(
            "the database has pending migrations and TIDEBASE_AUTO_MIGRATE=0: "
            + ", ".join(names)
            + "; apply them with `tidebase migrate` (or unset TIDEBASE_AUTO_MIGRATE)"
        )
        self.names = names


async def open_store(
    url: str, *, auto_migrate: bool, pool_min: int = 2, pool_max: int = 10
) -> WireStore:
    """A connected store whose schema is current (StoreUnavailable if Postgres is unreachable)."""
    store = await WireStore.connect(
        url, min_size=pool_min, max_size=pool_max, auto_migrate=auto_migrate
    )
    if not auto_migrate:
        try:
            async with store.pool.acquire() as conn:
                pending = await migrate.pending(conn)
        except BaseException:
            await store.close()
            raise
        if pending:
            await store.close()
            raise MigrationsPending([f"{m.version}_{m.name}.sql" for m in pending])
    return store
