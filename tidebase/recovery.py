"""Signed recovery webhooks: how the server asks your service to resume a run, and how you check it.

When a run with a recovery webhook fails or its worker's lease expires, `tidebase serve` POSTs a
JSON payload to the webhook, signed with HMAC-SHA256 under `TIDEBASE_WEBHOOK_SECRET`:

    Tidebase-Delivery:  del_<hex>          unique per delivery (replay protection)
    Tidebase-Timestamp: <unix seconds>     when it was signed (staleness check)
    Tidebase-Signature: v1=<hex>           HMAC-SHA256(secret, "<timestamp>.<delivery>.<body>")

`verify_delivery` checks all three; `RecoveryHandler` verifies and resumes the registered
workflow, and `RecoveryHandler.asgi_app()` mounts it in any ASGI framework.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tidebase.errors import RunLeased, RunNotFound, TidebaseError
from tidebase.hooks import AttemptInfo, AttemptTracker, RunObserver

if TYPE_CHECKING:
    from tidebase.aio import AsyncTidebase

_log = logging.getLogger("tidebase.recovery")

DELIVERY_HEADER = "tidebase-delivery"
TIMESTAMP_HEADER = "tidebase-timestamp"
SIGNATURE_HEADER = "tidebase-signature"
DEFAULT_TOLERANCE_S = 300
_MAX_BODY = 1_000_000


class DeliveryRejected(TidebaseError):
    """A recovery delivery failed verification. `reason` is machine-readable."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _mac(secret: str, timestamp: str, delivery_id: str, body: bytes) -> str:
    message = timestamp.encode() + b"." + delivery_id.encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign_delivery(
    body: bytes, secret: str, *, delivery_id: str | None = None, timestamp: int | None = None
) -> dict[str, str]:
    """The headers that sign `body` (used by the server; handy in tests)."""
    if not secret:
        raise ValueError("a webhook secret is required to sign recovery deliveries")
    delivery_id = delivery_id or f"del_{uuid.uuid4().hex}"
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "Tidebase-Delivery": delivery_id,
        "Tidebase-Timestamp": ts,
        "Tidebase-Signature": f"v1={_mac(secret, ts, delivery_id, body)}",
    }


class SeenDeliveries:
    """Remembers delivery ids for the tolerance window (in memory, bounded).

    One process only: with several replicas behind a load balancer, pass a shared `seen`
    callable to RecoveryHandler (e.g. one that inserts into a table with a unique key).
    """

    def __init__(self, ttl_s: float = DEFAULT_TOLERANCE_S * 2, max_entries: int = 100_000):
        self._ttl, self._max = ttl_s, max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_time(self, delivery_id: str) -> bool:
        now = time.monotonic()
        while self._seen and (
            len(self._seen) >= self._max or next(iter(self._seen.values())) < now - self._ttl
        ):
            self._seen.popitem(last=False)
        if delivery_id in self._seen:
            return False
        self._seen[delivery_id] = now
        return True


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def verify_delivery(
    headers: Mapping[str, str],
    body: bytes,
    secrets: str | Iterable[str],
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    seen: Callable[[str], bool] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Checks a delivery and returns its parsed payload, or raises DeliveryRejected.

    `secrets` may list several secrets (rotation). `seen(delivery_id)` must return True the
    first time it sees an id and False after; a replayed delivery is rejected.
    """
    keys = [secrets] if isinstance(secrets, str) else [s for s in secrets if s]
    if not keys:
        raise ValueError("no webhook secret configured: set TIDEBASE_WEBHOOK_SECRET")
    delivery_id = _header(headers, DELIVERY_HEADER)
    timestamp = _header(headers, TIMESTAMP_HEADER)
    signature = _header(headers, SIGNATURE_HEADER)
    if not (delivery_id and timestamp and signature):
        raise DeliveryRejected("unsigned", "missing Tidebase-Delivery/Timestamp/Signature headers")
    try:
        signed_at = int(timestamp)
    except ValueError:
        raise DeliveryRejected("malformed", f"bad Tidebase-Timestamp {timestamp!r}") from None
    current = time.time() if now is None else now
    if abs(current - signed_at) > tolerance_s:
        raise DeliveryRejected(
            "stale", f"delivery signed {int(current - signed_at)} s ago (tolerance {tolerance_s} s)"
        )
    offered = [p.removeprefix("v1=") for p in signature.split(",") if p.strip().startswith("v1=")]
    valid = any(
        hmac.compare_digest(candidate, _mac(key, timestamp, delivery_id, body))
        for key in keys
        for candidate in offered
    )
    if not valid:
        raise DeliveryRejected(
            "bad_signature", "signature does not match (tampered or wrong secret)"
        )
    if seen is not None and not seen(delivery_id):
        raise DeliveryRejected("replayed", f"delivery {delivery_id} was already received")
    try:
        payload = json.loads(body)
    except ValueError:
        raise DeliveryRejected("malformed", "body is not JSON") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("runId"), str):
        raise DeliveryRejected("malformed", "payload has no runId")
    return payload


@dataclass(frozen=True, slots=True)
class RecoveryResult:
    """What handling a delivery did: HTTP status and JSON body to answer with."""

    status: int
    body: dict[str, Any]


class RecoveryHandler:
    """Verifies recovery deliveries and resumes the run with the workflow registered for it.

    `tide.workflow(name)` registers workflows. The run is resumed in the background (the
    webhook is answered 202 at once) unless `wait=True`.
    """

    def __init__(
        self,
        tide: AsyncTidebase,
        secret: str | Iterable[str] | None = None,
        *,
        tolerance_s: float = DEFAULT_TOLERANCE_S,
        seen: Callable[[str], bool] | None = None,
        wait: bool = False,
    ):
        import os

        self._tide = tide
        self._secrets = secret if secret is not None else os.environ.get("TIDEBASE_WEBHOOK_SECRET")
        if not self._secrets:
            raise ValueError("RecoveryHandler needs a secret (or TIDEBASE_WEBHOOK_SECRET)")
        self._tolerance = tolerance_s
        self._seen = seen or SeenDeliveries(ttl_s=tolerance_s * 2).first_time
        self._wait = wait
        self._tasks: set[asyncio.Task[Any]] = set()

    async def handle(self, headers: Mapping[str, str], body: bytes) -> RecoveryResult:
        """Framework-neutral: verify, then resume. Never raises for a bad delivery."""
        try:
            payload = verify_delivery(
                headers, body, self._secrets, tolerance_s=self._tolerance, seen=self._seen
            )
        except DeliveryRejected as exc:
            _log.warning("recovery delivery rejected (%s): %s", exc.reason, exc)
            return RecoveryResult(
                401 if exc.reason != "malformed" else 400, {"error": str(exc), "reason": exc.reason}
            )
        workflow = payload.get("workflowName")
        fn = self._tide.workflows.get(workflow) if isinstance(workflow, str) else None
        if fn is None:
            return RecoveryResult(404, {"error": f"no workflow registered for {workflow!r}"})
        run_id = payload["runId"]
        leased = _LeaseTaken()
        resume = asyncio.create_task(self._resume(workflow, fn, run_id, leased))
        if self._wait:
            outcome = await resume
            return RecoveryResult(200, {"runId": run_id, "outcome": outcome})
        # Answer only once this process holds the run (or could not take it): a 202 means the
        # run is really being resumed, so the server's delivery record can be trusted; any
        # error answer makes the server try again later.
        taken = asyncio.create_task(leased.event.wait())
        await asyncio.wait({resume, taken}, return_when=asyncio.FIRST_COMPLETED)
        taken.cancel()
        if not leased.event.is_set():
            outcome = resume.result()
            return RecoveryResult(_status_for(outcome), {"runId": run_id, "outcome": outcome})
        self._tasks.add(resume)
        resume.add_done_callback(self._tasks.discard)
        return RecoveryResult(202, {"runId": run_id, "outcome": "resuming"})

    async def _resume(
        self, workflow: str, fn: Callable[..., Awaitable[Any]], run_id: str, leased: _LeaseTaken
    ) -> str:
        try:
            await self._tide.run(workflow, fn, run_id=run_id, create=False, observers=[leased])
            return "completed"
        except RunNotFound:
            return "not_found"
        except RunLeased:
            return "leased"
        except Exception as exc:  # noqa: BLE001 - reported to the caller, logged here
            _log.warning("resuming run %s after a recovery delivery failed: %s", run_id, exc)
            return f"failed: {type(exc).__name__}: {exc}"

    def asgi_app(self) -> Callable[..., Awaitable[None]]:
        """An ASGI app answering POST deliveries (mount it at your webhook path)."""

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            if scope.get("method") != "POST":
                await _respond(send, 405, {"error": "method not allowed"})
                return
            chunks, size = [], 0
            while True:
                message = await receive()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > _MAX_BODY:
                    await _respond(send, 413, {"error": "body too large"})
                    return
                chunks.append(chunk)
                if not message.get("more_body"):
                    break
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            result = await self.handle(headers, b"".join(chunks))
            await _respond(send, result.status, result.body)

        return app


class _LeaseTaken(RunObserver):
    """Observer that signals when the resumed attempt holds the run lease."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def attempt(self, info: AttemptInfo) -> AttemptTracker:
        event = self.event

        class _Tracker(AttemptTracker):
            def begun(self, info: AttemptInfo) -> None:
                event.set()

        return _Tracker()


def _status_for(outcome: str) -> int:
    """The HTTP answer when the run could not be taken: the server retries what is retryable."""
    if outcome == "not_found":
        return 404
    if outcome == "leased":
        return 409  # another worker already resumed it
    if outcome == "completed":
        return 200  # already completed: nothing to resume
    return 503  # could not begin (e.g. the store is unreachable): try again later


async def _respond(send: Any, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
