"""Pipelined checkpoints: pure steps' outputs written in the background, in batches.

With ``AsyncTidebase(pipeline_checkpoints=True)`` a pure step (no declared side effects)
returns as soon as its output is encoded. Its checkpoint joins the run's queue, which one
writer task sends to the store in batches: one round trip and one commit for every step that
finished while the previous batch was being written. Every other write of the run waits for the
queue to be empty first (`flush`), so writes keep their order: a side-effecting step never
starts, a failure is never recorded, and a run never completes before every earlier checkpoint
is committed.

The price, and why it is opt-in: a crash can lose the checkpoints of pure steps that finished
while the last batch was in flight (about one round trip's worth), and those steps run again on
resume (a pure step may always run
again; nothing with declared side effects is ever pipelined). A write that fails (`LeaseLost`,
`StoreUnavailable`, ...) is raised by the run's next step or write instead of by the step whose
checkpoint it was.
"""

from __future__ import annotations

import asyncio
import time

from tidebase.errors import StoreUnavailable
from tidebase.store.base import Checkpoint, Store

__all__ = ["MAX_LAG_S", "MAX_PENDING", "CheckpointPipeline"]

MAX_PENDING = 1000  # queued checkpoints at which a step waits for the writer
MAX_LAG_S = 0.1  # a step waits for the batch in flight once it has been in flight this long


class CheckpointPipeline:
    """The queue of one run attempt's unwritten checkpoints and the task that writes them."""

    __slots__ = ("_error", "_lease_ms", "_pending", "_sent_at", "_store", "_writer")

    def __init__(self, store: Store, lease_ms: int) -> None:
        self._store = store
        self._lease_ms = lease_ms
        self._pending: list[Checkpoint] = []
        self._writer: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._sent_at = 0.0  # when the batch in flight was sent (time.monotonic)

    async def add(self, checkpoint: Checkpoint) -> None:
        """Queues a checkpoint (raising the error of an earlier write, if one failed).

        Then yields to the event loop once, so the writer sends it now even when the run's
        steps never wait on anything (blocking code): otherwise the writer, the lease
        heartbeat and cancellation would all wait for the run's next real wait, and a crash
        would lose every checkpoint since. And waits for the writer when the batch in flight
        is older than `MAX_LAG_S` (slow or blocking steps: the write needs the loop to finish,
        and finishing it renews the lease; pipelining has nothing to win there) or when
        `MAX_PENDING` checkpoints are queued (the writer cannot keep up)."""
        self.check()
        self._pending.append(checkpoint)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(
                self._write_all(), name=f"tidebase-checkpoints-{checkpoint.key.run_id}"
            )
        await asyncio.sleep(0)
        if self._writer is not None and (
            len(self._pending) >= MAX_PENDING or time.monotonic() - self._sent_at > MAX_LAG_S
        ):
            await asyncio.shield(self._writer)
        self.check()

    def check(self) -> None:
        """Raises the error of a failed write: the run cannot go on after losing checkpoints."""
        if self._error is not None:
            raise self._error

    async def flush(self) -> None:
        """Returns once every queued checkpoint is committed; raises if a write failed.

        The write in flight is shielded: cancelling the caller does not cancel it."""
        while self._writer is not None:
            await asyncio.shield(self._writer)
        self.check()

    async def _write_all(self) -> None:
        try:
            while self._pending and self._error is None:
                batch, self._pending = self._pending, []
                self._sent_at = time.monotonic()
                try:
                    await self._store.complete_steps(batch, self._lease_ms)
                except asyncio.CancelledError:
                    # Only the event loop shutting down cancels this task (callers shield it):
                    # end quietly, and fail the run's next write instead.
                    self._error = StoreUnavailable(
                        f"the checkpoints of steps {_names(batch)} were not written: the "
                        "writer was cancelled"
                    )
                    return
                except Exception as exc:  # noqa: BLE001 - kept, raised by the run's next write
                    exc.add_note(
                        f"tidebase: while writing the checkpoints of steps {_names(batch)}"
                    )
                    self._error = exc
        finally:
            self._writer = None


def _names(batch: list[Checkpoint]) -> str:
    names = [repr(c.key.name) for c in batch[:5]]
    more = f" and {len(batch) - 5} more" if len(batch) > 5 else ""
    return ", ".join(names) + more
