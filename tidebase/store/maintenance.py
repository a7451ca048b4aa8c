"""Housekeeping SQL of the reconciler and the recovery-webhook sender (migrations/004).

Used by `tidebase serve` and by `tidebase reconcile` / queue workers in direct mode; never by a
run attempt. Each method is one statement on the store's pool.
"""

from __future__ import annotations

from typing import Any

from tidebase.store.postgres import PostgresStore

_RECONCILE = "SELECT tidebase_reconcile($1, $2)"
_REQUEST_RECOVERY = "SELECT tidebase_request_recovery($1, $2, $3)"
_CLAIM_RECOVERIES = "SELECT tidebase_claim_recoveries($1, $2)"
_RECORD_RECOVERY = "SELECT tidebase_record_recovery($1, $2, $3, $4, $5, $6)"


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
