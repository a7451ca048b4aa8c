"""Sends recovery webhooks: the signed POSTs that ask a user's service to resume a run.

The reconciler (in `tidebase serve`, or `tidebase reconcile` in direct mode) calls
`RecoverySender.deliver_due()` every tick. Each due delivery is claimed in the database (no two
senders take the same one), POSTed with `tidebase.recovery.sign_delivery` headers, and its
outcome recorded in `recovery_attempts` (status, HTTP status, response excerpt, error). A failed
try is retried with exponential backoff up to `max_tries`; a run attempt is delivered
successfully at most once (manual recovers aside).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import httpx

from tidebase.hooks import RecoveryInfo, RunObserver, global_observers, notify_recovery
from tidebase.recovery import sign_delivery
from tidebase.store.maintenance import Maintenance

_log = logging.getLogger("tidebase.recovery")

_EXCERPT_CHARS = 1000
_MAX_BACKOFF_MS = 300_000


class RecoverySender:
    """Delivers pending recovery webhooks, `batch` at a time (the global throttle)."""

    def __init__(
        self,
        maintenance: Maintenance,
        secret: str,
        *,
        timeout_s: float = 10.0,
        batch: int = 20,
        max_tries: int = 5,
        backoff_ms: int = 1000,
        observers: Sequence[RunObserver] = (),
    ):
        if not secret:
            raise ValueError("recovery webhooks need TIDEBASE_WEBHOOK_SECRET to be signed")
        self._maintenance = maintenance
        self._secret = secret
        self._batch = batch
        self._max_tries = max_tries
        self._backoff_ms = backoff_ms
        self._observers = list(observers)
        self._client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)

    async def close(self) -> None:
        await self._client.aclose()

    async def deliver_due(self) -> list[dict[str, Any]]:
        """Sends every due delivery (up to `batch`); the recorded attempts."""
        claimed = await self._maintenance.claim_recoveries(self._batch)
        return await self._send_all(claimed)

    async def deliver_run(self, run_id: str) -> dict[str, Any] | None:
        """Sends the run's pending delivery now, due or not; the recorded attempt (None if the
        run has none pending, e.g. another sender is sending it)."""
        claimed = await self._maintenance.claim_recoveries(1, run_id)
        sent = await self._send_all(claimed)
        return sent[0] if sent else None

    async def _send_all(self, claimed: list[dict[str, Any]]) -> list[dict[str, Any]]:
        results = await asyncio.gather(*(self._send(item) for item in claimed))
        return [r for r in results if r is not None]

    async def _send(self, item: dict[str, Any]) -> dict[str, Any] | None:
        attempt, payload = item["recoveryAttempt"], item["payload"]
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        headers = sign_delivery(body, self._secret, delivery_id=payload["deliveryId"])
        headers["content-type"] = "application/json"
        http_status: int | None = None
        excerpt: str | None = None
        error: str | None = None
        started = time.perf_counter()
        try:
            response = await self._client.post(attempt["url"], content=body, headers=headers)
            http_status = response.status_code
            excerpt = response.text[:_EXCERPT_CHARS]
            if not response.is_success:
                error = f"HTTP {http_status}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        delivered = error is None
        tries = int(attempt["try"])
        retry_ms = (
            None
            if delivered or tries >= self._max_tries
            else min(self._backoff_ms * 2 ** (tries - 1), _MAX_BACKOFF_MS)
        )
        if not delivered:
            _log.warning(
                "recovery webhook for run %s (try %d) failed: %s", payload["runId"], tries, error
            )
        recorded = await self._maintenance.record_recovery(
            attempt["id"],
            delivered=delivered,
            http_status=http_status,
            excerpt=excerpt,
            error=error,
            retry_ms=retry_ms,
        )
        notify_recovery(
            [*global_observers(), *self._observers],
            RecoveryInfo(
                run_id=payload["runId"],
                workflow=payload["workflowName"],
                reason=payload["reason"],
                attempt=int(payload["attempt"]),
                try_number=tries,
                delivered=delivered,
                http_status=http_status,
                error=error,
                duration_s=time.perf_counter() - started,
                will_retry=retry_ms is not None,
            ),
        )
        return recorded
