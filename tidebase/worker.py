"""The queue worker behind `tide.work(...)` and `tidebase worker module:attr --queue q`.

It claims ready runs (`FOR UPDATE SKIP LOCKED`, priority then time, honouring each queue's
concurrency and rate caps), executes each with its registered workflow through the normal run
path (checkpoints, replay, lease heartbeats, telemetry) under the claim's lease owner, and lets
the database's one requeue rule decide what a failure means (retry with backoff until
`max_attempts`, then `failed` / `max_retries`).

Shutdown (SIGTERM/SIGINT, or `stop()`): stop claiming, give running work `grace_period`
seconds, then interrupt it; an interrupted attempt releases its lease and a queue run goes
straight back to `queued`, so another worker resumes it at once (completed steps replay).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import logging
import signal
from typing import TYPE_CHECKING, Any

from tidebase.errors import LeaseLost, RunCancelled, StoreUnavailable, TidebaseError
from tidebase.hooks import ClaimInfo, SpanRef, global_observers, start_claim
from tidebase.queues import AttemptOutcome

if TYPE_CHECKING:
    from tidebase.aio import AsyncTidebase

_log = logging.getLogger("tidebase.worker")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _wait_s(run: dict[str, Any]) -> float:
    """Seconds the run waited on its queue: from when it was ready (runAt) to its claim."""
    try:
        ready = _dt.datetime.fromisoformat(run["runAt"])
        claimed = _dt.datetime.fromisoformat(run["claimedAt"])
    except (KeyError, TypeError, ValueError):
        return 0.0
    return max(0.0, (claimed - ready).total_seconds())


# `until_idle`: how often, and how far apart, an empty claim is double-checked.
_IDLE_RECHECKS = 3
_IDLE_RECHECK_S = 0.05


class Worker:
    """Claims and executes queued runs for one `AsyncTidebase` client."""

    def __init__(
        self,
        tide: AsyncTidebase,
        queues: list[str],
        *,
        concurrency: int = 1,
        poll_interval: float = 0.5,
        grace_period: float = 30.0,
        reconcile: bool = False,
        until_idle: bool = False,
    ):
        from tidebase.aio import _check_name

        if not queues:
            raise ValueError("work() needs at least one queue name")
        for queue in queues:
            _check_name("queue name", queue)
        if not isinstance(concurrency, int) or not 1 <= concurrency <= 1000:
            raise ValueError(f"concurrency must be an integer 1..1000, got {concurrency!r}")
        self._tide = tide
        self._queues = list(dict.fromkeys(queues))
        self._concurrency = concurrency
        self._poll = poll_interval
        self._grace = grace_period
        self._reconcile = reconcile
        self._until_idle = until_idle
        self._stopping = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._active: set[asyncio.Task[None]] = set()

    def stop(self) -> None:
        """Graceful shutdown: stop claiming; running work gets the grace period."""
        self._stopping.set()
        self._wakeup.set()

    async def run(self, *, handle_signals: bool = True) -> None:
        """Works until stopped (or idle, with `until_idle`), then shuts down gracefully."""
        from tidebase.aio import _worker_id

        loop = asyncio.get_running_loop()
        installed = self._install_signals(loop) if handle_signals else []
        reconciler = await self._start_reconciler()
        idle_checks = 0
        try:
            while not self._stopping.is_set():
                free = self._concurrency - len(self._active)
                claimed: list[dict[str, Any]] = []
                if free > 0:
                    claimed = await self._claim(_worker_id(), free)
                for run in claimed:
                    task = asyncio.create_task(self._process(run), name=f"tidebase-{run['id']}")
                    self._active.add(task)
                    task.add_done_callback(self._done)
                if self._until_idle and not claimed and not self._active:
                    if not await self._skipped_ready_run(idle_checks):
                        break
                    idle_checks += 1
                    await asyncio.sleep(_IDLE_RECHECK_S)
                    continue
                idle_checks = 0
                if not claimed or len(self._active) >= self._concurrency:
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), self._poll)
        finally:
            await self._shutdown()
            if reconciler is not None:
                await reconciler.close()
            for sig in installed:
                loop.remove_signal_handler(sig)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        installed = []
        for sig in _STOP_SIGNALS:
            try:
                loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # not the main thread, or no signal support: stop() still works
            installed.append(sig)
        return installed

    async def _start_reconciler(self) -> Any:
        if not self._reconcile:
            return None
        from tidebase.reconciler import Reconciler
        from tidebase.store.postgres import PostgresStore

        store = await self._tide.store()
        if not isinstance(store, PostgresStore):
            return None
        reconciler = Reconciler(store)
        reconciler.start()
        return reconciler

    def _done(self, task: asyncio.Task[None]) -> None:
        self._active.discard(task)
        self._wakeup.set()

    async def _skipped_ready_run(self, checks_so_far: int) -> bool:
        """For `until_idle`: whether a claim that came back empty skipped a ready run (its row
        was locked by another transaction for a moment: claims use SKIP LOCKED), so the worker
        should look again instead of returning. Asked a few times at most: a queue held at its
        concurrency or rate cap also has ready runs this worker cannot claim."""
        if checks_so_far >= _IDLE_RECHECKS:
            return False
        try:
            store = await self._tide.store()
            queues = await store.list_queues()
        except (StoreUnavailable, TidebaseError):
            return False
        return any(q.get("ready") for q in queues if q.get("queue") in self._queues)

    async def _claim(self, owner: str, limit: int) -> list[dict[str, Any]]:
        try:
            store = await self._tide.store()
            return await store.claim(self._queues, owner, limit, self._tide.lease_ms)
        except (StoreUnavailable, TidebaseError) as exc:
            _log.warning("claiming from %s failed: %s", self._queues, exc)
            return []

    async def _shutdown(self) -> None:
        if not self._active:
            return
        _log.info(
            "worker stopping: waiting up to %.1f s for %d run(s)", self._grace, len(self._active)
        )
        _, pending = await asyncio.wait(set(self._active), timeout=self._grace)
        for task in pending:
            task.cancel()  # the attempt releases its lease; the run goes back to its queue
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def _process(self, run: dict[str, Any]) -> None:
        """Executes one claimed run under the claim's lease owner."""
        run_id, workflow = run["id"], run["workflowName"]
        owner = run["leaseOwner"]
        enqueued_by = (
            SpanRef(run["enqueuedTraceId"], run["enqueuedSpanId"])
            if run.get("enqueuedTraceId") and run.get("enqueuedSpanId")
            else None
        )
        tracker = start_claim(
            [*global_observers(), *self._tide._observers],
            ClaimInfo(
                run_id=run_id,
                workflow=workflow,
                queue=run.get("queue") or "",
                attempt=int(run.get("attempt") or 0),
                max_attempts=int(run.get("maxAttempts") or 1),
                wait_s=_wait_s(run),
                enqueued_by=enqueued_by,
            ),
        )
        fn = self._tide.workflows.get(workflow)
        if fn is None:
            await self._no_workflow(run_id, workflow, owner)
            tracker.finished("no_workflow")
            return
        outcome = AttemptOutcome()
        try:
            with tracker.active():
                await self._tide._run(workflow, fn, run_id, None, owner, outcome=outcome)
        except RunCancelled as exc:
            tracker.finished("cancelled", error=exc)
            _log.info("run %s was cancelled: %s", run_id, exc)
        except LeaseLost as exc:
            tracker.finished("lease_lost", error=exc)
            _log.warning("run %s: %s", run_id, exc)
        except asyncio.CancelledError as exc:
            tracker.finished("released", error=exc)
        except Exception as exc:  # noqa: BLE001 - recorded with the run; the worker goes on
            tracker.finished("requeued" if outcome.requeued else "failed", error=exc)
            what = "requeued" if outcome.requeued else "failed"
            _log.warning("run %s (%s) %s: %r", run_id, workflow, what, exc)
        else:
            tracker.finished("completed")

    async def _no_workflow(self, run_id: str, workflow: str, owner: str) -> None:
        _log.error("run %s: no workflow registered for %r", run_id, workflow)
        try:
            store = await self._tide.store()
            await store.fail_run(
                run_id, owner, {"message": f"no workflow registered for {workflow!r}"}, None
            )
        except TidebaseError as exc:
            _log.warning("could not fail run %s: %s", run_id, exc)
