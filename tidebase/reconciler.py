"""The reconciler: the periodic tick that brings stuck runs back (see migrations/004).

Every `interval_ms` (TIDEBASE_RECONCILE_MS, default 5000) one tick runs across all replicas (a
`pg_try_advisory_xact_lock`: a replica that does not get it skips the tick):
- queue runs whose worker's lease expired are requeued with backoff, or failed with
  `max_retries` once out of attempts (the same rule as a failed attempt);
- other running runs with a recovery webhook and an expired lease get a recovery request
  (at most one per run every TIDEBASE_RECOVERY_THROTTLE_MS, default 30 000);
- runs past their deadline are cancelled with reason `deadline`;
then due schedules are enqueued (migrations/005: every replica may try, the fenced update of a
schedule's next run time lets exactly one enqueue each due time; missed intervals are skipped,
the next run time is the first fire time after now), and due recovery webhooks are sent, when
this process has TIDEBASE_WEBHOOK_SECRET.

`tidebase serve` runs it; in direct mode run `tidebase reconcile`, or let queue workers tick
(`tide.work(..., reconcile=True)`, the default in direct mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

from tidebase.errors import ConfigurationError
from tidebase.recovery_sender import RecoverySender
from tidebase.schedules import BadCron, next_after
from tidebase.store.maintenance import Maintenance
from tidebase.store.postgres import PostgresStore

_log = logging.getLogger("tidebase.reconciler")
_NOTEWORTHY = ("requeued", "failed", "recoveryRequested", "deadlineCancelled", "scheduled")


def _env_ms(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer (milliseconds), got {raw!r}") from None
    if value < 0:
        raise ConfigurationError(f"{name} must be >= 0, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class ReconcilerSettings:
    """interval_ms 0 turns the loop off; webhook_secret None leaves deliveries pending."""

    interval_ms: int = 5000
    throttle_ms: int = 30_000
    webhook_secret: str | None = None
    limit: int = 100

    @classmethod
    def from_env(cls) -> ReconcilerSettings:
        return cls(
            interval_ms=_env_ms("TIDEBASE_RECONCILE_MS", 5000),
            throttle_ms=_env_ms("TIDEBASE_RECOVERY_THROTTLE_MS", 30_000),
            webhook_secret=os.environ.get("TIDEBASE_WEBHOOK_SECRET") or None,
        )


class Reconciler:
    """Runs reconciler ticks against a Postgres store, once or in a background loop."""

    def __init__(self, store: PostgresStore, settings: ReconcilerSettings | None = None):
        self.settings = settings or ReconcilerSettings.from_env()
        self.maintenance = Maintenance(store)
        self.sender = (
            RecoverySender(self.maintenance, self.settings.webhook_secret)
            if self.settings.webhook_secret
            else None
        )
        self._task: asyncio.Task[None] | None = None

    async def tick(self) -> dict[str, Any]:
        """One tick: the summary of what the database side did (`ran` false when another
        replica had the tick), plus `scheduled`: schedules this process enqueued, and
        `delivered`: recovery attempts sent by this process."""
        summary = await self.maintenance.reconcile(
            limit=self.settings.limit, throttle_ms=self.settings.throttle_ms
        )
        summary["scheduled"] = await self.enqueue_due_schedules()
        summary["delivered"] = await self.sender.deliver_due() if self.sender else []
        if any(summary.get(k) for k in _NOTEWORTHY):
            _log.info("reconciler tick: %s", {k: v for k, v in summary.items() if v})
        return summary

    async def enqueue_due_schedules(self) -> list[dict[str, Any]]:
        """Fires the due schedules: `[{schedule, dueAt, runId, nextRunAt}]` for those this
        process enqueued (a due time another replica fired first is not listed)."""
        fired = []
        for name, cron, due, now in await self.maintenance.due_schedules(self.settings.limit):
            try:
                next_run_at = next_after(cron, max(now, due))
            except BadCron as exc:  # checked when stored; only a croniter change could do this
                _log.warning("schedule %r: cannot compute its next run: %s", name, exc)
                continue
            result = await self.maintenance.fire_schedule(name, due, next_run_at)
            if result is not None:
                fired.append(
                    {
                        "schedule": name,
                        "dueAt": due.isoformat(),
                        "runId": result["run"]["id"],
                        "nextRunAt": next_run_at.isoformat(),
                    }
                )
        return fired

    async def run_forever(self) -> None:
        """Ticks every interval until cancelled; a failing tick is logged and retried."""
        interval = self.settings.interval_ms / 1000.0
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop must outlive a bad tick
                _log.warning("reconciler tick failed: %s", exc)
            await asyncio.sleep(interval)

    def start(self) -> None:
        """Starts the background loop (no-op when the interval is 0)."""
        if self.settings.interval_ms > 0 and self._task is None:
            self._task = asyncio.create_task(self.run_forever(), name="tidebase-reconciler")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.sender is not None:
            await self.sender.close()
