"""The observer interface through which extensions (tidebase_otel) watch runs and steps.

`tidebase` never imports `tidebase_otel`; instead it calls these hooks. An observer returns
small tracker objects so per-attempt and per-step state stays with the attempt, and a step
tracker is a context manager entered around the step function, so an observer can make its
span current while user code runs. Every hook call is guarded: an exception raised by an
observer is logged and swallowed, it never fails a run.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

_log = logging.getLogger("tidebase.hooks")
_NULL_CONTEXT = contextlib.nullcontext()  # reusable: entering it does nothing


@dataclass(frozen=True, slots=True)
class SpanRef:
    """Where a piece of work was traced: W3C trace id (32 hex) and span id (16 hex)."""

    trace_id: str
    span_id: str


@dataclass(frozen=True, slots=True)
class UsageAmount:
    """Usage recorded during a step's original execution, used for 'cost avoided by replay'."""

    provider: str | None
    model: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float


@dataclass(slots=True)
class AttemptInfo:
    """One attempt of a run. `attempt` and `previous` are filled in once the run lease is taken."""

    run_id: str
    workflow: str
    attempt: int = 0
    previous: SpanRef | None = None  # run span of the previous attempt, if it was traced


@dataclass(frozen=True, slots=True)
class StepInfo:
    """A step about to execute (or replay). `parent` is the name of the enclosing step, if any."""

    run_id: str
    workflow: str
    attempt: int
    name: str
    input_hash: str
    side_effects: tuple[str, ...]
    idempotency_key: str | None
    replay: str | None
    retries: int
    parent: str | None


@dataclass(frozen=True, slots=True)
class ReplayInfo:
    """A step served from its checkpoint instead of executing."""

    step: StepInfo
    executed_by: SpanRef | None  # the span that originally executed it
    usage: Sequence[UsageAmount] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class UsageInfo:
    """A usage record that was newly written to the ledger (never a duplicate)."""

    run_id: str
    workflow: str
    step: str | None
    kind: str
    provider: str | None
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int | None
    cost_usd: float | None
    quantity: float | None
    unit: str | None


class StepTracker:
    """Follows one execution of a step; entered around each call of the step function.

    Outcomes passed to `finished`: completed, failed, failed_retryable, manual_review,
    cancelled, lease_lost.
    """

    span_ref: SpanRef | None = None

    def running(self, try_number: int) -> AbstractContextManager[Any]:
        """A context manager wrapped around one call of the step function (the first try is 1)."""
        return _NULL_CONTEXT

    async def settle(self, try_number: int) -> None:
        """Awaited after each call of the step function (returned or raised), before its
        checkpoint or failure is written: async work that belongs to the try and must land
        under the run's lease goes here (tidebase_otel writes Agents SDK usage to the ledger).
        Keep it short; it delays the step."""

    def try_failed(self, try_number: int, error: BaseException, will_retry: bool) -> None:
        """A try raised; `will_retry` says whether another try follows."""

    def finished(
        self,
        outcome: str,
        *,
        error: BaseException | None = None,
        resume_decision: str | None = None,
        duration_s: float = 0.0,
    ) -> None:
        """The step ended for this attempt."""


class AttemptTracker:
    """Follows one attempt of a run."""

    span_ref: SpanRef | None = None

    def begun(self, info: AttemptInfo) -> None:
        """The run lease is held; `info.attempt` and `info.previous` are now known."""

    def step(self, info: StepInfo) -> StepTracker:
        """A step is about to execute."""
        return StepTracker()

    def replayed(self, info: ReplayInfo) -> None:
        """A step was served from its checkpoint."""

    def refused(self, info: StepInfo, error: BaseException) -> None:
        """A step was refused before running: parked in manual review, or failed for good
        (`error` is the `StepNeedsReview` / `StepFailedPermanently` about to be raised)."""

    def usage_recorded(self, info: UsageInfo) -> None:
        """A usage record was newly written (exactly once per ledger row)."""

    def usage_cost(self, info: UsageInfo) -> float | None:
        """The cost in USD to store with a usage record given without one (`info.cost_usd` is
        None), e.g. from a price table; None leaves it unpriced. Asked before the record is
        written, so the ledger holds the cost that metrics report."""
        return None

    def finished(self, status: str, *, error: BaseException | None = None) -> None:
        """The attempt ended: completed, failed, cancelled, lease_lost, replayed (already done)."""

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Wraps the whole attempt (the user's workflow function runs inside it)."""
        yield


@dataclass(frozen=True, slots=True)
class EnqueueInfo:
    """A run about to be enqueued."""

    queue: str
    workflow: str
    dedupe_key: str | None
    priority: int
    max_attempts: int


class EnqueueTracker:
    """Follows one enqueue call. `span_ref` is stored with the run: every attempt's processing
    (`ClaimInfo.enqueued_by`) refers back to it."""

    span_ref: SpanRef | None = None

    def finished(
        self,
        *,
        run_id: str | None = None,
        deduplicated: bool = False,
        error: BaseException | None = None,
    ) -> None:
        """The enqueue returned (or raised)."""


@dataclass(frozen=True, slots=True)
class ClaimInfo:
    """A queued run a worker claimed and is about to execute."""

    run_id: str
    workflow: str
    queue: str
    attempt: int
    max_attempts: int
    wait_s: float  # from when the run was ready (runAt) to its claim
    enqueued_by: SpanRef | None  # the span that enqueued the run


class ClaimTracker:
    """Follows the processing of one claimed run by a worker.

    Outcomes passed to `finished`: completed, requeued (failed, will be retried), failed,
    cancelled, lease_lost, released (the worker stopped before it finished), no_workflow.
    """

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Wraps the run attempt (tide.run executes inside it)."""
        yield

    def finished(self, outcome: str, *, error: BaseException | None = None) -> None:
        """The worker is done with the run."""


@dataclass(frozen=True, slots=True)
class CancelInfo:
    """A cancellation request (`tide.cancel`) and what it did: cancelled | already | completed."""

    run_id: str
    reason: str | None
    actor: str | None
    outcome: str


@dataclass(frozen=True, slots=True)
class RecoveryInfo:
    """One delivery try of a run's recovery webhook (reason: failed | lease_expired | manual)."""

    run_id: str
    workflow: str
    reason: str
    attempt: int
    try_number: int
    delivered: bool
    http_status: int | None
    error: str | None
    duration_s: float
    will_retry: bool


class RunObserver:
    """Base class for observers. Override `attempt` to return your own tracker; the queue,
    cancellation and recovery hooks are optional (no-ops here)."""

    def attempt(self, info: AttemptInfo) -> AttemptTracker:
        return AttemptTracker()

    def enqueue(self, info: EnqueueInfo) -> EnqueueTracker:
        """A run is about to be enqueued; the tracker's span is current during the call."""
        return EnqueueTracker()

    def claimed(self, info: ClaimInfo) -> ClaimTracker:
        """A worker claimed a queued run."""
        return ClaimTracker()

    def cancelled(self, info: CancelInfo) -> None:
        """`tide.cancel` was called."""

    def recovery(self, info: RecoveryInfo) -> None:
        """A recovery webhook delivery was tried."""


_global_observers: list[RunObserver] = []


def add_observer(observer: RunObserver) -> None:
    """Registers an observer for every AsyncTidebase client (used by `tidebase_otel.instrument`)."""
    if observer not in _global_observers:
        _global_observers.append(observer)


def remove_observer(observer: RunObserver) -> None:
    with contextlib.suppress(ValueError):
        _global_observers.remove(observer)


def global_observers() -> tuple[RunObserver, ...]:
    return tuple(_global_observers)


class _FailureLog:
    """Logs observer failures without flooding the log: the first failure of each kind with
    its traceback, then at most one line per kind and interval counting the ones since.

    A broken span processor fails on every span; one traceback says what is wrong, and a
    traceback per step would bury everything else the application logs.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._kinds: dict[str, list[float]] = {}  # kind -> [last logged at, suppressed since]

    def failed(self, what: str) -> None:
        """Call from an ``except`` block: reports the exception being handled."""
        now = time.monotonic()
        with self._lock:
            state = self._kinds.get(what)
            if state is None:
                self._kinds[what] = [now, 0]
                first = True
            else:
                state[1] += 1
                if now - state[0] < self._interval_s:
                    return
                suppressed = int(state[1])
                state[0], state[1] = now, 0
                first = False
        if first:
            if len(self._kinds) == 1:  # the first failure of any kind
                atexit.register(self.flush)  # repeats after the last summary still get a line
            self._logger.warning(
                "%s failed (telemetry only, the run goes on; repeats are summarised at most "
                "once every %.0f s)",
                what,
                self._interval_s,
                exc_info=True,
            )
        else:
            self._logger.warning(
                "%s failed %s in the last %.0f s (latest: %r)",
                what,
                _more_times(suppressed),
                self._interval_s,
                sys.exc_info()[1],
            )

    def flush(self) -> None:
        """Logs the repeats counted since each kind's last line (at exit, so a failure that
        stopped recurring within an interval is not left out)."""
        with self._lock:
            pending = [(what, int(state[1])) for what, state in self._kinds.items() if state[1]]
            for what, _ in pending:
                self._kinds[what][1] = 0
        for what, suppressed in pending:
            self._logger.warning(
                "%s failed %s since it was last reported", what, _more_times(suppressed)
            )


def _more_times(count: int) -> str:
    return f"{count} more time" + ("" if count == 1 else "s")


_failures = _FailureLog(_log)


def log_observer_failure(what: str) -> None:
    """For observers' own guards: logs the exception being handled as a telemetry failure of
    kind ``what``, with the same rate limit as the hook layer (a traceback the first time,
    then a count at most once a minute)."""
    _failures.failed(what)


def _guard(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Calls an observer hook; logs and swallows anything it raises."""
    handling = sys.exc_info()[1]  # e.g. the step's own error, when reporting it
    try:
        return fn(*args, **kwargs)
    except Exception as failure:  # noqa: BLE001 - telemetry must never fail a run
        if failure.__context__ is handling is not None:
            # Raised while tidebase was handling the user's error, not because of it: a
            # traceback saying "during handling of ZeroDivisionError" would mislead.
            failure.__suppress_context__ = True
        _failures.failed(f"tidebase observer hook {what}")
        return None


class _FanoutStep(StepTracker):
    def __init__(self, trackers: list[StepTracker]):
        self._trackers = trackers
        refs = [t.span_ref for t in trackers if getattr(t, "span_ref", None) is not None]
        self.span_ref = refs[0] if refs else None

    @contextlib.contextmanager
    def running(self, try_number: int) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for tracker in self._trackers:
                cm = _guard("step.running", tracker.running, try_number)
                if cm is not None:
                    stack.enter_context(_SafeCM(cm))
            yield

    async def settle(self, try_number: int) -> None:
        for t in self._trackers:
            try:
                await t.settle(try_number)
            except Exception:  # noqa: BLE001 - telemetry must never fail a run
                _failures.failed("tidebase observer hook step.settle")

    def try_failed(self, try_number: int, error: BaseException, will_retry: bool) -> None:
        for t in self._trackers:
            _guard("step.try_failed", t.try_failed, try_number, error, will_retry)

    def finished(self, outcome: str, **kwargs: Any) -> None:
        for t in self._trackers:
            _guard("step.finished", t.finished, outcome, **kwargs)


class _GuardedStep(StepTracker):
    """The step tracker of the only observer (the usual case: tidebase_otel), each call
    guarded; cheaper on every step than the fan-out over a list."""

    __slots__ = ("_tracker", "span_ref")

    def __init__(self, tracker: StepTracker):
        self._tracker = tracker
        self.span_ref = getattr(tracker, "span_ref", None)

    def running(self, try_number: int) -> AbstractContextManager[Any]:
        try:
            return _SafeCM(self._tracker.running(try_number))
        except Exception:  # noqa: BLE001 - telemetry must never fail a run
            _failures.failed("tidebase observer hook step.running")
            return _NULL_CONTEXT

    async def settle(self, try_number: int) -> None:
        try:
            await self._tracker.settle(try_number)
        except Exception:  # noqa: BLE001
            _failures.failed("tidebase observer hook step.settle")

    def try_failed(self, try_number: int, error: BaseException, will_retry: bool) -> None:
        _guard("step.try_failed", self._tracker.try_failed, try_number, error, will_retry)

    def finished(self, outcome: str, **kwargs: Any) -> None:
        _guard("step.finished", self._tracker.finished, outcome, **kwargs)


class _SafeCM:
    """Wraps an observer's context manager so neither its enter nor its exit can raise."""

    __slots__ = ("_cm", "_entered")

    def __init__(self, cm: Any):
        self._cm = cm
        self._entered = False

    def __enter__(self) -> None:
        try:
            self._cm.__enter__()
            self._entered = True
        except Exception:  # noqa: BLE001
            _failures.failed("tidebase observer context enter")

    def __exit__(self, *exc: Any) -> bool:
        if self._entered:
            try:
                self._cm.__exit__(*exc)
            except Exception:  # noqa: BLE001
                _failures.failed("tidebase observer context exit")
        return False


class _FanoutAttempt(AttemptTracker):
    """Dispatches to the trackers of several observers, guarding each call."""

    def __init__(self, trackers: list[AttemptTracker]):
        self._trackers = trackers
        refs = [t.span_ref for t in trackers if getattr(t, "span_ref", None) is not None]
        self.span_ref = refs[0] if refs else None

    def begun(self, info: AttemptInfo) -> None:
        for t in self._trackers:
            _guard("attempt.begun", t.begun, info)

    def step(self, info: StepInfo) -> StepTracker:
        trackers = [_guard("attempt.step", t.step, info) for t in self._trackers]
        return _step_dispatch([t for t in trackers if t is not None])

    def replayed(self, info: ReplayInfo) -> None:
        for t in self._trackers:
            _guard("attempt.replayed", t.replayed, info)

    def refused(self, info: StepInfo, error: BaseException) -> None:
        for t in self._trackers:
            hook = getattr(t, "refused", None)  # trackers written before this hook lack it
            if hook is not None:
                _guard("attempt.refused", hook, info, error)

    def usage_recorded(self, info: UsageInfo) -> None:
        for t in self._trackers:
            _guard("attempt.usage_recorded", t.usage_recorded, info)

    def usage_cost(self, info: UsageInfo) -> float | None:
        for t in self._trackers:
            hook = getattr(t, "usage_cost", None)  # trackers written before this hook lack it
            cost = _guard("attempt.usage_cost", hook, info) if hook is not None else None
            if cost is not None:
                return cost
        return None

    def finished(self, status: str, *, error: BaseException | None = None) -> None:
        for t in self._trackers:
            _guard("attempt.finished", t.finished, status, error=error)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for tracker in self._trackers:
                cm = _guard("attempt.active", tracker.active)
                if cm is not None:
                    stack.enter_context(_SafeCM(cm))
            yield


class _GuardedAttempt(_FanoutAttempt):
    """The attempt tracker of the only observer: steps get a `_GuardedStep`."""

    def step(self, info: StepInfo) -> StepTracker:
        tracker = _guard("attempt.step", self._trackers[0].step, info)
        if tracker is None or type(tracker) is StepTracker:
            return _NO_STEP
        return _GuardedStep(tracker)


_NO_STEP = StepTracker()  # stateless: shared by every step nobody observes


def _step_dispatch(trackers: list[StepTracker]) -> StepTracker:
    trackers = [t for t in trackers if type(t) is not StepTracker]  # the base class: no-ops
    if not trackers:
        return _NO_STEP
    if len(trackers) == 1:
        return _GuardedStep(trackers[0])
    return _FanoutStep(trackers)


class _Unobserved(AttemptTracker):
    """An attempt nobody observes: every hook is a no-op, every step shares `_NO_STEP`."""

    def step(self, info: StepInfo) -> StepTracker:
        return _NO_STEP


def _start_attempt(observers: Sequence[RunObserver], info: AttemptInfo) -> AttemptTracker:
    trackers = [_guard("observer.attempt", o.attempt, info) for o in observers]
    # None: the hook failed; the base class: an observer of other things (e.g. queues)
    trackers = [t for t in trackers if t is not None and type(t) is not AttemptTracker]
    if not trackers:
        return _Unobserved()
    if len(trackers) == 1:
        return _GuardedAttempt(trackers)
    return _FanoutAttempt(trackers)


# -- queue, cancellation and recovery hooks ------------------------------------------------------


def _hook(observer: Any, name: str) -> Any:
    """The observer's hook `name`, or None (observers need not subclass RunObserver)."""
    return getattr(observer, name, None)


class _FanoutEnqueue(EnqueueTracker):
    def __init__(self, trackers: list[EnqueueTracker]):
        self._trackers = trackers
        refs = [t.span_ref for t in trackers if getattr(t, "span_ref", None) is not None]
        self.span_ref = refs[0] if refs else None

    def finished(self, **kwargs: Any) -> None:
        for t in self._trackers:
            _guard("enqueue.finished", t.finished, **kwargs)


class _FanoutClaim(ClaimTracker):
    def __init__(self, trackers: list[ClaimTracker]):
        self._trackers = trackers

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for tracker in self._trackers:
                cm = _guard("claim.active", tracker.active)
                if cm is not None:
                    stack.enter_context(_SafeCM(cm))
            yield

    def finished(self, outcome: str, *, error: BaseException | None = None) -> None:
        for t in self._trackers:
            _guard("claim.finished", t.finished, outcome, error=error)


def start_enqueue(observers: Sequence[RunObserver], info: EnqueueInfo) -> EnqueueTracker:
    """The fan-out tracker of an enqueue call (hooks guarded)."""
    hooks = [h for h in (_hook(o, "enqueue") for o in observers) if h is not None]
    trackers = [_guard("observer.enqueue", h, info) for h in hooks]
    return _FanoutEnqueue([t for t in trackers if t is not None])


def start_claim(observers: Sequence[RunObserver], info: ClaimInfo) -> ClaimTracker:
    """The fan-out tracker of a claimed run's processing (hooks guarded)."""
    hooks = [h for h in (_hook(o, "claimed") for o in observers) if h is not None]
    trackers = [_guard("observer.claimed", h, info) for h in hooks]
    return _FanoutClaim([t for t in trackers if t is not None])


def notify_cancelled(observers: Sequence[RunObserver], info: CancelInfo) -> None:
    for o in observers:
        hook = _hook(o, "cancelled")
        if hook is not None:
            _guard("observer.cancelled", hook, info)


def notify_recovery(observers: Sequence[RunObserver], info: RecoveryInfo) -> None:
    for o in observers:
        hook = _hook(o, "recovery")
        if hook is not None:
            _guard("observer.recovery", hook, info)
