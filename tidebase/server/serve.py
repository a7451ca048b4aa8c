"""`tidebase serve`: run the HTTP API with uvicorn until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import uvicorn
from starlette.applications import Starlette

from tidebase.embedded import redact_url, resolve_database_url
from tidebase.errors import ConfigurationError, StoreUnavailable
from tidebase.server.app import create_app
from tidebase.server.config import DEFAULT_HOST, DEFAULT_PORT, ServerConfig
from tidebase.server.database import open_store


class _Server(uvicorn.Server):
    """Ends open event streams as soon as shutdown starts, so they do not hold it up."""

    def __init__(self, config: uvicorn.Config, app: Starlette):
        super().__init__(config)
        self._tidebase_app = app

    def handle_exit(self, sig: int, frame: Any) -> None:
        hub = getattr(self._tidebase_app.state, "hub", None)
        if hub is not None:
            hub.close_streams_threadsafe()
        super().handle_exit(sig, frame)


async def _prepare(config: ServerConfig) -> None:
    assert config.database_url is not None
    store = await open_store(
        config.database_url, auto_migrate=config.auto_migrate, pool_min=1, pool_max=1
    )
    await store.close()


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    config: ServerConfig | None = None,
    log_level: str = "info",
) -> None:
    """Serves the Tidebase HTTP API on host:port until interrupted.

    The database is `config.database_url`, else TIDEBASE_DATABASE_URL / DATABASE_URL, else an
    embedded Postgres (announced on stderr). Pending migrations are applied first unless
    TIDEBASE_AUTO_MIGRATE=0, in which case a database with pending migrations is refused
    (ConfigurationError naming them). Raises StoreUnavailable if Postgres cannot be reached.
    """
    config = config or ServerConfig.from_env()
    with _signals_deferred():
        url = config.database_url or resolve_database_url(announce=True)
        config = dataclasses.replace(config, database_url=url)
        asyncio.run(_prepare(config))
    try:
        from tidebase_otel.prometheus import meter_provider

        meter_provider(service_name="tidebase-server")
    except ImportError:  # no tidebase[otel]: /metrics answers 501 and says what to install
        pass
    app = create_app(config)
    auth = "API key required" if config.api_key else "no API key (open)"
    print(
        f"tidebase: serving http://{host}:{port} over {redact_url(url)} ({auth})",
        file=sys.stderr,
    )
    server = _Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=10,
        ),
        app,
    )
    _exit_normally_on_sigterm()
    server.run()


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Holds SIGINT/SIGTERM while the database starts: interrupted half-way, the embedded
    Postgres was left running (its exit hook only stops a server it finished starting). The
    signal is acted on (exit 130/143) once start-up is done, and the hook can stop it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    watched = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in watched}
    for sig in watched:
        if previous[sig] != signal.SIG_IGN:
            signal.signal(sig, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(sig, handler)
    if received:
        print("tidebase serve: stopped while starting", file=sys.stderr)
        raise SystemExit(128 + received[0])


def _exit_normally_on_sigterm() -> None:
    """uvicorn re-raises the signal that stopped it once it has shut down. SIGTERM's default
    action then kills the process before its exit hooks run, which left the embedded Postgres
    running (and a throwaway one's folder behind): make it an ordinary exit, status 143."""
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, _exit_for_signal)


def _exit_for_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for `tidebase serve [--host H] [--port P]`; returns the exit status."""
    parser = argparse.ArgumentParser(prog="tidebase serve", description=serve.__doc__)
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind ({DEFAULT_HOST})")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port to listen on ({DEFAULT_PORT})"
    )
    args = parser.parse_args(argv)
    try:
        serve(args.host, args.port)
    except (ConfigurationError, StoreUnavailable) as exc:
        print(f"tidebase serve: {exc}", file=sys.stderr)
        return 2
    return 0
