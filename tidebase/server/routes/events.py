"""The run's event log as Server-Sent Events: replay from `?after=<seq>`, then live events.

Each message is `id: <seq>` and `data: <event JSON>`. Live events come from any server replica
(the hub listens to Postgres notifications); the stream always reads the log itself, in seq
order from the last event it sent, so it never skips or repeats one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tidebase.errors import StoreUnavailable
from tidebase.server import deps
from tidebase.server.errors import error
from tidebase.server.paths import param

_log = logging.getLogger("tidebase.server")
_BATCH = 500
_MAX_SEQ = (1 << 63) - 1


def _message(event: dict) -> str:
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return f"id: {event['seq']}\ndata: {data}\n\n"


async def run_events(request: Request) -> Response:
    run_id = param(request, "runId")
    after = deps.query_int(request, "after", 0, minimum=0, maximum=_MAX_SEQ)
    store = deps.store(request)
    if not await store.run_exists(run_id):
        return error(404, "run not found")
    hub = deps.hub(request)
    keepalive = deps.config(request).sse_keepalive_s

    async def stream() -> AsyncIterator[str]:
        last = after
        # Subscribe before the first read: an event appended in between wakes us, so the read
        # after the wake-up sees it.
        async with hub.subscribe(run_id) as sub:
            while True:
                try:
                    batch = await store.events_after(run_id, last, _BATCH)
                except StoreUnavailable as exc:
                    _log.warning("events stream of run %s: %s", run_id, exc)
                    yield ": database unavailable, retrying\n\n"
                    await asyncio.sleep(1.0)
                    continue
                if batch:
                    last = batch[-1]["seq"]
                    yield "".join(_message(event) for event in batch)
                    if len(batch) == _BATCH:
                        continue
                if sub.closed:
                    return
                if not await sub.wait(keepalive):
                    yield ": keepalive\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


routes = [Route("/runs/{runId}/events", run_events, methods=["GET"])]
