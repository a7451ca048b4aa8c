"""An in-process server on a background thread: for tests, benchmarks and notebooks.

    with BackgroundServer(ServerConfig(database_url=url)) as server:
        tide = AsyncTidebase(server.url)

The server runs its own event loop on a daemon thread, listens on a real loopback socket (port 0
picks a free one), and is shut down gracefully on exit.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from tidebase.server.app import create_app
from tidebase.server.config import ServerConfig


class BackgroundServer:
    """Runs `tidebase serve`'s app with uvicorn on a thread; `url` once started."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        start_timeout_s: float = 60.0,
        log_level: str = "warning",
        tracer_provider: Any = None,
    ):
        self.app = create_app(config, tracer_provider=tracer_provider)
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host=host,
                port=port,
                log_level=log_level,
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=5,
            )
        )
        # Off the main thread uvicorn leaves signal handling to the main thread's owner.
        self._thread = threading.Thread(
            target=self._server.run, name="tidebase-server", daemon=True
        )
        self._host = host
        self._timeout = start_timeout_s
        self.url = ""

    def start(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + self._timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the Tidebase server failed to start (see its log)")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the Tidebase server did not start in time")
            time.sleep(0.02)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{self._host}:{port}"
        return self

    def stop(self) -> None:
        hub = getattr(self.app.state, "hub", None)
        self._server.should_exit = True
        if hub is not None:
            hub.close_streams_threadsafe()
        self._thread.join(timeout=30)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
