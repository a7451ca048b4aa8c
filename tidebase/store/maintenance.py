"""Housekeeping SQL of the reconciler and the recovery-webhook sender (migrations/004).

Used by `tidebase serve` and by `tidebase reconcile` / queue workers in direct mode; never by a
run attempt. Each method is one statement on the store's pool. Schedules (migrations/005): due
ones are listed, then each is fired on its own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tidebase.store.postgres import PostgresStore

_RECONCILE = "SELECT tidebase_reconcile($1, $2)"
_REQUEST_RECOVERY = "SELECT tidebase_request_recovery($1, $2, $3)"
_CLAIM_RECOVERIES = "SELECT tidebase_claim_recoveries($1, $2)"
_RECORD_RECOVERY = "SELECT tidebase_record_recovery($1, $2, $3, $4, $5, $6)"
_DUE_SCHEDULES = """
SELECT COALESCE(jsonb_agg(jsonb_build_object('name', s.name, 'cron', s.cron,
                                             'dueAt', s.next_run_at, 'now', now())
                          ORDER BY s.next_run_at, s.name), '[]'::jsonb)
  FROM (SELECT name, cron, next_run_at FROM schedules
         WHERE enabled AND next_run_at <= now()
         ORDER BY next_run_at, name LIMIT $1) s"""
_FIRE_SCHEDULE = "SELECT tidebase_fire_schedule($1, $2, $3)"


class Maintenance:
    """The reconciler's and the recovery sender's view of a Postgres store."""

    def __init__(self, store: PostgresStore):
        self.store = store

    async def reconcile(self, *, limit: int, throttle_ms: int) -> dict[str, Any]:
        """One reconciler tick; `{ran: false}` when another replica holds the tick lock, else
        the run ids requeued, failed (max_retries), sent to recovery and cancelled (deadline)."""
        return await self.store._fetchval(
            _RECONCILE, limit, throttle_ms, run_id="", idempotent=False
        )

    async def request_recovery(self, run_id: str, reason: str, throttle_ms: int = 0) -> str | None:
        """Queues a recovery delivery for the run's current attempt; its id, or None when the
        run has no webhook or one is already open / delivered / throttled."""
        return await self.store._fetchval(
            _REQUEST_RECOVERY, run_id, reason, throttle_ms, run_id=run_id, idempotent=False
        )

    async def claim_recoveries(self, limit: int, run_id: str | None = None) -> list[dict[str, Any]]:
        """Due deliveries, now `sending` and ours: `[{recoveryAttempt, payload}]`. With `run_id`,
        that run's pending delivery whether due or not (a manual recover)."""
        return await self.store._fetchval(
            _CLAIM_RECOVERIES, limit, run_id, run_id=run_id or "", idempotent=False
        )

    async def record_recovery(
        self,
        attempt_id: str,
        *,
        delivered: bool,
        http_status: int | None,
        excerpt: str | None,
        error: str | None,
        retry_ms: int | None,
    ) -> dict[str, Any] | None:
        """Stores a try's outcome (and queues the next try after `retry_ms` when it failed)."""
        return await self.store._fetchval(
            _RECORD_RECOVERY,
            attempt_id,
            delivered,
            http_status,
            excerpt,
            error,
            retry_ms,
            run_id="",
            idempotent=False,
        )

    async def due_schedules(self, limit: int) -> list[tuple[str, str, datetime, datetime]]:
        """Enabled schedules whose next run time has come: `(name, cron, due, db_now)`."""
        rows = await self.store._fetchval(_DUE_SCHEDULES, limit, run_id="", idempotent=True)
        return [
            (
                row["name"],
                row["cron"],
                datetime.fromisoformat(row["dueAt"]),
                datetime.fromisoformat(row["now"]),
            )
            for row in rows
        ]

    async def fire_schedule(
        self, name: str, due: datetime, next_run_at: datetime
    ) -> dict[str, Any] | None:
        """Moves the schedule's next run from `due` to `next_run_at` and enqueues its run, in one
        transaction: `{run, deduplicated}`, or None when this due time was already fired (by
        another replica) or the schedule changed meanwhile."""
        return await self.store._fetchval(
            _FIRE_SCHEDULE, name, due, next_run_at, run_id="", idempotent=True
        )
