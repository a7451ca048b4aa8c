"""Live events across server replicas: a Postgres LISTEN connection per server process.

Every event append notifies channel `tidebase_events` with `<run_id>:<seq>` (migration 002), in
the writer's transaction, so whichever replica wrote it, every replica hears it after commit. A
notification only wakes the streams of that run; they then read the log from the last seq they
sent, so nothing is missed or duplicated even if notifications coalesce or arrive late.

The hub listens only while at least one event stream is open (plus a short grace period): a
listening backend makes every committing writer signal it, which costs the checkpoint path
when nobody is watching. If the LISTEN connection drops, the hub reconnects with backoff and
wakes every stream to catch up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg

_log = logging.getLogger("tidebase.server")

CHANNEL = "tidebase_events"


class Subscription:
    """A stream's wake-up signal for one run."""

    __slots__ = ("_event", "closed", "run_id")

    def __init__(self, run_id: str):
        self.run_id = run_id
        self._event = asyncio.Event()
        self.closed = False

    def wake(self) -> None:
        self._event.set()

    async def wait(self, seconds: float) -> bool:
        """True when woken (new events or shutdown), False after `seconds` without."""
        try:
            async with asyncio.timeout(seconds):
                await self._event.wait()
        except TimeoutError:
            return False
        self._event.clear()
        return True


class EventHub:
    """Dispatches Postgres notifications to the subscriptions of each run."""

    def __init__(
        self, database_url: str, *, idle_unlisten_s: float = 30.0, max_backoff_s: float = 10.0
    ):
        self._url = database_url
        self._subs: dict[str, set[Subscription]] = {}
        self._count = 0
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._closing = False
        self._reconnect: asyncio.Task[None] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._unlisten_task: asyncio.Task[None] | None = None
        self._idle_unlisten_s = idle_unlisten_s
        self._max_backoff_s = max_backoff_s
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def start(self) -> None:
        """Binds the hub to the running loop (the LISTEN connection opens on first use)."""
        self._loop = asyncio.get_running_loop()

    async def _ensure_listening(self) -> None:
        async with self._lock:
            if self.listening or self._closing:
                return
            conn = await asyncpg.connect(self._url, timeout=10)
            try:
                await conn.add_listener(CHANNEL, self._notified)
            except BaseException:
                await conn.close()
                raise
            conn.add_termination_listener(self._terminated)
            self._conn = conn

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        run_id = payload.rpartition(":")[0]
        for sub in self._subs.get(run_id, ()):
            sub.wake()

    def _terminated(self, conn: object) -> None:
        if conn is not self._conn:
            return  # closed on purpose (idle)
        self._conn = None
        if self._closing or self._count == 0:
            return
        _log.warning("event hub: LISTEN connection lost; reconnecting")
        self._wake_all()
        if self._reconnect is None or self._reconnect.done():
            self._reconnect = asyncio.get_running_loop().create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        delay = 0.2
        while not self._closing and self._count:
            try:
                await self._ensure_listening()
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                _log.warning("event hub: reconnect failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_backoff_s)
                continue
            self._wake_all()  # catch up on anything written while deaf
            return

    def _wake_all(self) -> None:
        for subs in self._subs.values():
            for sub in subs:
                sub.wake()

    @contextlib.asynccontextmanager
    async def subscribe(self, run_id: str) -> AsyncIterator[Subscription]:
        """A subscription for the duration of the `async with` block (listening meanwhile).

        If Postgres cannot be reached for LISTEN, the subscription still works: the stream
        re-reads the log at every keep-alive interval.
        """
        sub = Subscription(run_id)
        sub.closed = self._closing
        self._subs.setdefault(run_id, set()).add(sub)
        self._count += 1
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        try:
            try:
                await self._ensure_listening()
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                _log.warning("event hub: cannot LISTEN (%s); streams fall back to polling", exc)
            yield sub
        finally:
            self._count -= 1
            subs = self._subs.get(run_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[run_id]
            if self._count == 0 and self.listening and not self._closing:
                self._idle_timer = asyncio.get_running_loop().call_later(
                    self._idle_unlisten_s, self._start_unlisten
                )

    def _start_unlisten(self) -> None:
        self._idle_timer = None
        self._unlisten_task = asyncio.get_running_loop().create_task(self._unlisten_if_idle())

    async def _unlisten_if_idle(self) -> None:
        async with self._lock:
            if self._count or self._conn is None:
                return
            conn, self._conn = self._conn, None
        with contextlib.suppress(Exception):
            await conn.close(timeout=5)

    def close_streams(self) -> None:
        """Tells every open stream to finish (server shutdown)."""
        self._closing = True
        for subs in self._subs.values():
            for sub in subs:
                sub.closed = True
                sub.wake()

    def close_streams_threadsafe(self) -> None:
        """`close_streams` from another thread or a signal handler."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.close_streams)

    async def close(self) -> None:
        self.close_streams()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._reconnect is not None:
            self._reconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await conn.close(timeout=5)
