"""HTTP routes, one module per area of the wire API."""

from __future__ import annotations

from starlette.routing import BaseRoute

from tidebase.server.routes import (
    children,
    events,
    gates,
    later,
    queues,
    recovery,
    runs,
    schedules,
    state,
    steps,
    usage,
)


def all_routes() -> list[BaseRoute]:
    """Every route. No two routes overlap (same path shape and method), so order only
    affects speed."""
    return [
        *steps.routes,  # the checkpoint path first: routes are matched in order
        *runs.routes,
        *usage.routes,
        *state.routes,
        *events.routes,
        *gates.routes,
        *children.routes,
        *queues.routes,
        *recovery.routes,
        *schedules.routes,
        *later.routes,
    ]
