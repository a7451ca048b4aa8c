"""The ASGI application of `tidebase serve`: routes, middleware, and the database lifecycle."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tidebase.embedded import resolve_database_url
from tidebase.reconciler import Reconciler, ReconcilerSettings
from tidebase.server.auth import ApiKeyMiddleware
from tidebase.server.config import ServerConfig
from tidebase.server.database import open_store
from tidebase.server.errors import EXCEPTION_HANDLERS, error
from tidebase.server.hub import EventHub
from tidebase.server.paths import RawPathMiddleware
from tidebase.server.routes import all_routes
from tidebase.server.tracing import TracingMiddleware


async def health(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def _not_found(request: Request, exc: Exception) -> Response:
    return error(404, "not found")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return error(405, "method not allowed")


def _metrics_routes() -> list[Route]:
    """`/metrics` for Prometheus, served by the optional OpenTelemetry extension.

    The checkpoint layer does not depend on tidebase_otel; the server mounts its endpoint when
    the extension is installed (it answers 501 naming the missing extra otherwise).
    """
    try:
        from tidebase_otel.prometheus import metrics_app
    except ImportError:
        return []
    return [Route("/metrics", metrics_app(), methods=["GET"])]


def create_app(config: ServerConfig | None = None, *, tracer_provider: Any = None) -> Starlette:
    """The app; its lifespan opens the store (migrating, or refusing while migrations are
    pending), the event hub and the reconciler (which also sends recovery webhooks), and
    closes them on shutdown.

    Request spans go to `tracer_provider` if given, else to the global OpenTelemetry provider.
    """
    config = config or ServerConfig.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        url = config.database_url or resolve_database_url(announce=True)
        store = await open_store(
            url,
            auto_migrate=config.auto_migrate,
            pool_min=config.pool_min,
            pool_max=config.pool_max,
        )
        hub = EventHub(url)
        try:
            await hub.start()
        except BaseException:
            await store.close()
            raise
        reconciler = Reconciler(
            store,
            ReconcilerSettings(
                interval_ms=config.reconcile_ms,
                throttle_ms=config.recovery_throttle_ms,
                webhook_secret=config.webhook_secret,
            ),
        )
        reconciler.start()
        app.state.store = store
        app.state.hub = hub
        app.state.reconciler = reconciler
        try:
            yield
        finally:
            await reconciler.close()
            await hub.close()
            await store.close()

    app = Starlette(
        routes=[Route("/health", health, methods=["GET"]), *_metrics_routes(), *all_routes()],
        middleware=[
            Middleware(RawPathMiddleware),
            Middleware(TracingMiddleware, tracer_provider=tracer_provider),
            Middleware(ApiKeyMiddleware, api_key=config.api_key),
        ],
        exception_handlers={
            **EXCEPTION_HANDLERS,
            404: _not_found,
            405: _method_not_allowed,
        },
        lifespan=lifespan,
    )
    app.state.config = config
    return app
