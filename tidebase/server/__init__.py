"""`tidebase serve`: the Tidebase HTTP API over the same Postgres store as direct mode.

    from tidebase.server import serve
    serve(host="127.0.0.1", port=7373)

`create_app(config)` returns the ASGI app (Starlette) for embedding or tests; `main(argv)` is
the command-line entry point.
"""

from tidebase.server.app import create_app
from tidebase.server.config import DEFAULT_HOST, DEFAULT_PORT, ServerConfig
from tidebase.server.database import MigrationsPending
from tidebase.server.serve import main, serve

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "MigrationsPending",
    "ServerConfig",
    "create_app",
    "main",
    "serve",
]
