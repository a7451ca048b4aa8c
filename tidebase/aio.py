"""The async SDK: `AsyncTidebase` runs a workflow durably, `RunContext` checkpoints its steps.

A run attempt begins with one round trip that takes the run lease and returns every checkpoint
of the run; finished steps then replay from memory. A pure step costs one round trip when it
completes; a step that declares side effects records its start first (two round trips), so a
crash in the middle of the effect is visible and classified on the next attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import datetime as _dt
import inspect
import logging
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tidebase import codec
from tidebase.checkpoint_pipeline import CheckpointPipeline
from tidebase.contract import (
    REPLAY_MODES,
    STATUS_FOR_DECISION,
    classify_resume_decision,
    error_payload,
    hash_input,
    same_json,
)
from tidebase.errors import (
    AttemptEnded,
    ConfigurationError,
    DuplicateStep,
    InputMismatch,
    LeaseLost,
    RunAlreadyCompleted,
    RunCancelled,
    RunInputMismatch,
    RunLeased,
    SerializationError,
    StepFailedPermanently,
    StepNeedsReview,
    StoreUnavailable,
    TidebaseError,
    WorkflowMismatch,
    describe_number,
)
from tidebase.hooks import (
    AttemptInfo,
    AttemptTracker,
    CancelInfo,
    ReplayInfo,
    RunObserver,
    StepInfo,
    StepTracker,
    UsageInfo,
    _start_attempt,
    global_observers,
    notify_cancelled,
)
from tidebase.queues import AttemptOutcome, Enqueued, check_webhook_url, enqueue_run
from tidebase.store.base import Checkpoint, StepKey, StepRecord, Store, UsageRecord

_log = logging.getLogger("tidebase")

DEFAULT_URL = "http://localhost:7373"
_MAX_NAME = 200
_MAX_BACKOFF_S = 30.0

# Errors that end a step (or run) as they are: never retried, never classified as step failures.
_CONTROL_ERRORS = (
    LeaseLost,
    RunCancelled,
    StepNeedsReview,
    StepFailedPermanently,
    InputMismatch,
    DuplicateStep,
    AttemptEnded,
)
# The step outcome each control error ends a step with (anything else: failed).
_CONTROL_OUTCOMES: dict[type[BaseException], str] = {
    LeaseLost: "lease_lost",
    RunCancelled: "cancelled",
}


def _call_name(awaitable: Any) -> str:
    """The function an awaitable came from, for error hints (`fetch` for `fetch()`)."""
    code = getattr(awaitable, "cr_code", None) or getattr(awaitable, "gi_code", None)
    return code.co_name if code is not None else "fn"


@dataclass(slots=True)
class _StepFrame:
    """The step whose function is running in the current context (for nesting and usage)."""

    run: RunContext
    name: str
    try_number: int
    parent: _StepFrame | None = None
    usage_seq: int = 0
    # A control error (lost lease, cancellation, a parked nested step) raised by a nested step.
    # Frameworks may swallow exceptions raised in tools (the Agents SDK reports them to the model
    # and carries on), so the enclosing step re-raises it instead of completing.
    poisoned: BaseException | None = None

    def poison(self, error: BaseException) -> None:
        frame: _StepFrame | None = self
        while frame is not None:
            if frame.poisoned is None:
                frame.poisoned = error
            frame = frame.parent


_current_step: contextvars.ContextVar[_StepFrame | None] = contextvars.ContextVar(
    "tidebase_current_step", default=None
)


_MIN_LEASE_MS = 1000
_MAX_LEASE_MS = 24 * 3600 * 1000


def _check_lease_ms(value: Any, source: str) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip() or "60000")
        except ValueError:
            raise ConfigurationError(
                f"{source} must be an integer (milliseconds), got {value!r}"
            ) from None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigurationError(f"{source} must be an integer (milliseconds), got {value!r}")
    if not _MIN_LEASE_MS <= value <= _MAX_LEASE_MS:
        raise ConfigurationError(
            f"{source} must be between {_MIN_LEASE_MS} and {_MAX_LEASE_MS} ms, got {value}"
        )
    return value


def _lease_ms_default() -> int:
    return _check_lease_ms(os.environ.get("TIDEBASE_LEASE_MS", "60000"), "TIDEBASE_LEASE_MS")


def _env_flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ConfigurationError(f"{name} must be 1/true/yes/on or 0/false/no/off, got {value!r}")


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _check_name(kind: str, name: Any) -> str:
    """Names of steps, workflows and runs: non-empty text without control characters."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{kind} must be a non-empty string, got {name!r}")
    if len(name) > _MAX_NAME:
        raise ValueError(f"{kind} {name[:40]!r}... is longer than {_MAX_NAME} characters")
    if not name.isprintable():
        raise ValueError(f"{kind} {name!r} contains control characters")
    return name


def _check_text(field_name: str, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value.isprintable()):
        raise ValueError(f"usage_record: {field_name} must be printable text, got {value!r}")


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _call_workflow(fn: Callable[..., Any], ctx: RunContext) -> Any:
    """The workflow function; its attempt ends the moment it returns or raises, before any
    other task runs, so a step task it left behind (never awaited) records nothing."""
    try:
        return await _call(fn, ctx, ctx.input)
    finally:
        ctx._ended = True


@dataclass(slots=True)
class RunStats:
    """What one attempt did: which steps executed and which replayed from checkpoints."""

    executed: list[str] = field(default_factory=list)
    replayed: list[str] = field(default_factory=list)


class RunContext:
    """The handle a workflow function receives: `step`, state and usage for one run attempt."""

    def __init__(
        self,
        *,
        store: Store,
        run_id: str,
        workflow: str,
        attempt: int,
        owner: str,
        lease_ms: int,
        input: Any,
        steps: Sequence[StepRecord],
        tracker: AttemptTracker,
        pipeline_checkpoints: bool = False,
    ):
        self._store = store
        self._checkpoints = CheckpointPipeline(store, lease_ms) if pipeline_checkpoints else None
        self.run_id = run_id
        self.workflow = workflow
        self.attempt = attempt
        self.input = input
        self._owner = owner
        self._lease_ms = lease_ms
        self._steps = {s.name: s for s in steps}
        self._parked_children: dict[str, StepRecord] = {
            s.parent_name: s
            for s in steps
            if s.parent_name
            and (
                s.status == "manual_review"
                or (s.status == "failed" and s.resume_decision == "fail_hard")
            )
        }
        self._used: set[str] = set()
        self._tracker = tracker
        self._usage_seq = 0
        self._stopped: BaseException | None = None
        self._ended = False  # the attempt is over: later steps raise AttemptEnded
        # Steps parked for review in this attempt: a failed attempt with any is parked too,
        # whatever exception the workflow raised in the end.
        self._parked_steps: set[str] = set()
        self.stats = RunStats()

    @property
    def lease_owner(self) -> str:
        return self._owner

    def _check_alive(self, call: str = "", *, step: str = "") -> None:
        """Raises when the run cannot go on: its attempt ended (naming the `step` or `call`
        refused), it was stopped, or a pipelined checkpoint write failed."""
        if self._ended:
            raise AttemptEnded(self.run_id, self.attempt, f"step {step!r}" if step else call)
        if self._stopped is not None:
            raise self._stopped
        if self._checkpoints is not None:
            self._checkpoints.check()

    async def _flush_checkpoints(self) -> None:
        """Waits for pipelined checkpoints to be committed: every other write goes after them."""
        if self._checkpoints is not None:
            await self._checkpoints.flush()

    async def _keep_finished_steps(self) -> None:
        """On the way out of a failed or interrupted attempt: writes the checkpoints of the
        steps that did finish (so the next attempt replays them), logging a failure."""
        try:
            await self._flush_checkpoints()
        except Exception as write_error:  # noqa: BLE001 - the attempt's own error must surface
            _log.warning(
                "run %r: pipelined checkpoints were not written: %s", self.run_id, write_error
            )

    # -- steps -----------------------------------------------------------------------------

    async def step(
        self,
        name: str,
        fn: Callable[[], Any],
        *,
        input: Any = None,
        side_effects: Sequence[str] | None = None,
        idempotency_key: str | None = None,
        retries: int = 0,
        replay: str | None = None,
        retry_delay: float = 0.5,
        input_hash: str | None = None,
    ) -> Any:
        """Runs `fn` once per run and checkpoints its result; later attempts replay it.

        `fn` may return a value or an awaitable. `input` identifies what the step computes from:
        calling a recorded step with a different input raises `InputMismatch` instead of
        replaying a stale answer. `side_effects` (e.g. ["ticket.create"]) with no
        `idempotency_key` makes a failed or interrupted step wait for manual review instead of
        running again.
        """
        parent = _current_step.get()
        if parent is not None and parent.run is not self:
            parent = None
        try:
            return await self._step(
                name,
                fn,
                input,
                side_effects,
                idempotency_key,
                retries,
                replay,
                retry_delay,
                input_hash,
                parent,
            )
        except (TidebaseError, ValueError, TypeError) as exc:
            if self._ended and isinstance(exc, LeaseLost):
                # A step still running when its attempt ended (not awaited): say so, rather
                # than blame another worker.
                raise AttemptEnded(self.run_id, self.attempt, f"step {name!r}") from exc
            # Misuse and control errors raised inside a tool are swallowed by frameworks such
            # as the Agents SDK (reported to the model): the enclosing step re-raises them.
            # A user's own ValueError/TypeError from the step function is left alone.
            if parent is not None and getattr(exc, "_tidebase_user_error", False) is False:
                parent.poison(exc)
            raise

    async def _step(
        self,
        name: str,
        fn: Callable[[], Any],
        input: Any,
        side_effects: Sequence[str] | None,
        idempotency_key: str | None,
        retries: int,
        replay: str | None,
        retry_delay: float,
        input_hash: str | None,
        parent: _StepFrame | None,
    ) -> Any:
        _check_name("step name", name)
        if not callable(fn):
            hint = (
                f"; pass the function, not its call (lambda: {_call_name(fn)}(...))"
                if inspect.isawaitable(fn)
                else ""
            )
            if inspect.iscoroutine(fn):
                fn.close()  # never awaited: close it rather than leave Python to warn
            raise TypeError(
                f"step {name!r}: fn must be a callable (a function or coroutine function), "
                f"got {type(fn).__name__}{hint}"
            )
        options = self._options(name, side_effects, idempotency_key, retries, replay, retry_delay)
        self._check_alive(step=name)
        if name in self._used:
            raise DuplicateStep(name)
        self._used.add(name)
        digest = input_hash or self._hash(name, input)
        stored_input = codec.encode(input, what=f"input of step {name!r}")
        info = self._step_info(name, digest, options, parent.name if parent is not None else None)
        key = StepKey(self.run_id, self._owner, name, info.parent, digest, stored_input, options)

        known = self._steps.get(name)
        if known is not None:
            if known.input_hash != digest:
                raise InputMismatch(name, known.input_hash, digest)
            if known.status == "completed":
                return self._replay(info, known)
            try:
                await self._check_resumable(key, info, known)
            except (StepNeedsReview, StepFailedPermanently) as refusal:
                self._tracker.refused(info, refusal)
                raise
        parked = self._parked_children.get(name)
        if parked is not None:
            # Re-executing this step would reach the parked nested step again (and, for an
            # agent run, pay for the model again) only to stop there: stop now instead.
            refusal = StepNeedsReview(
                self.run_id, parked.name, f"it is parked, and step {name!r} encloses it"
            )
            self._tracker.refused(info, refusal)
            # ...and the parked step it encloses, known here only from its record.
            recorded = self._step_info(
                parked.name, parked.input_hash, parked.options or {}, parked.parent_name
            )
            self._tracker.refused(recorded, refusal)
            self._parked_steps.add(parked.name)
            raise refusal

        return await self._execute(key, info, fn, retries, retry_delay)

    def _step_info(
        self, name: str, input_hash: str, options: Mapping[str, Any], parent: str | None
    ) -> StepInfo:
        """What hooks are told of a step, from its options as stored (`_options`' shape)."""
        return StepInfo(
            run_id=self.run_id,
            workflow=self.workflow,
            attempt=self.attempt,
            name=name,
            input_hash=input_hash,
            side_effects=tuple(options.get("sideEffects") or ()),
            idempotency_key=options.get("idempotencyKey"),
            replay=options.get("replay"),
            retries=int(options.get("retries") or 0),
            parent=parent,
        )

    def _options(
        self,
        name: str,
        side_effects: Sequence[str] | None,
        idempotency_key: str | None,
        retries: int,
        replay: str | None,
        retry_delay: float,
    ) -> dict[str, Any]:
        if side_effects is not None and (
            not isinstance(side_effects, (list, tuple))
            or not all(isinstance(e, str) for e in side_effects)
        ):
            raise TypeError(
                f"step {name!r}: side_effects must be a list of strings, got {side_effects!r}"
            )
        if idempotency_key is not None and not isinstance(idempotency_key, str):
            raise TypeError(
                f"step {name!r}: idempotency_key must be a string, got "
                f"{type(idempotency_key).__name__}"
            )
        if not isinstance(retry_delay, (int, float)) or not 0 <= retry_delay <= 3600:
            raise ValueError(
                f"step {name!r}: retry_delay must be 0..3600 seconds, got {retry_delay!r}"
            )
        if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 100:
            raise ValueError(f"step {name!r}: retries must be an integer 0..100, got {retries!r}")
        if replay is not None and replay not in REPLAY_MODES:
            raise ValueError(
                f"step {name!r}: replay must be one of {sorted(REPLAY_MODES)}, got {replay!r}"
            )
        options: dict[str, Any] = {"retries": retries}
        if side_effects:
            options["sideEffects"] = list(side_effects)
        if idempotency_key is not None:
            options["idempotencyKey"] = idempotency_key
        if replay is not None:
            options["replay"] = replay
        return options

    @staticmethod
    def _hash(name: str, value: Any) -> str:
        try:
            return hash_input(value)
        except (TypeError, ValueError) as exc:
            raise SerializationError(
                f"input of step {name!r}", "", type(value).__qualname__, str(exc)
            ) from exc

    def _replay(self, info: StepInfo, record: StepRecord) -> Any:
        try:
            value = codec.decode(record.output)
        except Exception as exc:
            raise TidebaseError(
                f"step {info.name!r}: its recorded output cannot be decoded: {exc}"
            ) from exc
        self.stats.replayed.append(info.name)
        self._tracker.replayed(ReplayInfo(info, record.executed_by, tuple(record.usage)))
        return value

    async def _check_resumable(self, key: StepKey, info: StepInfo, known: StepRecord) -> None:
        """Refuses to re-execute a step that is parked, failed for good, or died mid-effect."""
        if known.status == "manual_review":
            self._parked_steps.add(info.name)
            raise StepNeedsReview(self.run_id, info.name, "it is parked in manual review")
        if known.status == "failed" and known.resume_decision == "fail_hard":
            raise StepFailedPermanently(self.run_id, info.name)
        if known.status != "running":
            return
        # Started in an earlier attempt and never finished: the worker died mid-step.
        decision = classify_resume_decision(known.options)
        if decision in ("manual_review", "fail_hard"):
            error = {
                "name": "Interrupted",
                "message": f"the worker died while the step was running (run attempt "
                f"{known.run_attempt}); its side effects may or may not have happened",
            }
            await self._flush_checkpoints()
            await self._store.fail_step(key, error, STATUS_FOR_DECISION[decision], decision, None)
            if decision == "manual_review":
                self._parked_steps.add(info.name)
                raise StepNeedsReview(
                    self.run_id,
                    info.name,
                    "the worker died while it was running and it declares external writes "
                    "without an idempotency key",
                )
            raise StepFailedPermanently(self.run_id, info.name)

    async def _execute(
        self,
        key: StepKey,
        info: StepInfo,
        fn: Callable[[], Any],
        retries: int,
        retry_delay: float,
    ) -> Any:
        tracker: StepTracker = self._tracker.step(info)
        started = time.perf_counter()
        try:
            if "sideEffects" in key.options:
                await self._flush_checkpoints()
                begun = await self._store.start_step(key, self._lease_ms)
                if begun.action == "return":  # completed meanwhile (same lease holder)
                    tracker.finished("completed", duration_s=time.perf_counter() - started)
                    return codec.decode(begun.step.output)
            value = await self._run_tries(key, info, fn, retries, retry_delay, tracker, started)
        except _CONTROL_ERRORS as exc:
            outcome = _CONTROL_OUTCOMES.get(type(exc), "failed")
            tracker.finished(outcome, error=exc, duration_s=time.perf_counter() - started)
            raise
        except StoreUnavailable as exc:
            tracker.finished("failed", error=exc, duration_s=time.perf_counter() - started)
            raise
        return value

    async def _record_step_failure(
        self, key: StepKey, exc: BaseException, status: str, decision: str, tracker: StepTracker
    ) -> None:
        """Records a failed try. Losing the run stops further tries; any other trouble writing
        the record (and anything on the final try) is logged, so the caller sees the user's
        own exception."""
        try:
            await self._flush_checkpoints()
            await self._store.fail_step(key, error_payload(exc), status, decision, tracker.span_ref)
        except (LeaseLost, RunCancelled):
            if status == "failed_retryable":
                raise
            _log.warning("could not record failure of step %r: the run was lost", key.name)
        except Exception as write_error:  # noqa: BLE001
            _log.warning("could not record failure of step %r: %s", key.name, write_error)

    async def _run_tries(
        self,
        key: StepKey,
        info: StepInfo,
        fn: Callable[[], Any],
        retries: int,
        retry_delay: float,
        tracker: StepTracker,
        started: float,
    ) -> Any:
        try_number = 0
        while True:
            try_number += 1
            enclosing = _current_step.get()
            frame = _StepFrame(
                self,
                info.name,
                try_number,
                parent=enclosing if enclosing is not None and enclosing.run is self else None,
            )
            token = _current_step.set(frame)
            try:
                try:
                    with tracker.running(try_number):
                        value = await _call(fn)
                        if frame.poisoned is not None:
                            raise frame.poisoned
                        encoded = codec.encode(value, what=f"output of step {info.name!r}")
                finally:
                    # Observers finish async work of this try (e.g. usage writes) under the lease.
                    await tracker.settle(try_number)
            except _CONTROL_ERRORS:
                raise
            except Exception as exc:
                final = try_number > retries or isinstance(exc, SerializationError)
                tracker.try_failed(try_number, exc, will_retry=not final)
                if not final:
                    await self._record_step_failure(
                        key, exc, "failed_retryable", "auto_retry", tracker
                    )
                    delay = min(retry_delay * 2 ** (try_number - 1), _MAX_BACKOFF_S)
                    await asyncio.sleep(delay * (0.5 + random.random() / 2))
                    continue
                decision = classify_resume_decision(key.options)
                status = STATUS_FOR_DECISION[decision]
                await self._record_step_failure(key, exc, status, decision, tracker)
                tracker.finished(
                    status,
                    error=exc,
                    resume_decision=decision,
                    duration_s=time.perf_counter() - started,
                )
                if status == "manual_review":
                    self._parked_steps.add(info.name)
                    if frame.parent is not None:
                        frame.parent.poison(
                            StepNeedsReview(self.run_id, info.name, f"it failed: {exc!r}")
                        )
                    exc.add_note(
                        f"tidebase: step {info.name!r} is parked in manual review; resolve it "
                        f"with `tidebase runs resolve {self.run_id} {info.name} --retry` or "
                        "`--output JSON`"
                    )
                if not isinstance(exc, TidebaseError):
                    with contextlib.suppress(AttributeError, TypeError):
                        exc._tidebase_user_error = True  # type: ignore[attr-defined]
                raise
            finally:
                _current_step.reset(token)
            break
        if self._ended:
            # Finished after its workflow function returned (a step task nobody awaited): the
            # attempt may already be recorded as over, so its result is not checkpointed.
            raise AttemptEnded(self.run_id, self.attempt, f"step {info.name!r}")
        pipeline = self._checkpoints
        if pipeline is not None:  # (no extra await on the default path)
            if "sideEffects" not in key.options:
                await pipeline.add(Checkpoint(key, encoded, tracker.span_ref))
                self.stats.executed.append(info.name)
                tracker.finished("completed", duration_s=time.perf_counter() - started)
                return value
            await pipeline.flush()
        written = await self._store.complete_step(key, encoded, tracker.span_ref, self._lease_ms)
        self.stats.executed.append(info.name)
        tracker.finished("completed", duration_s=time.perf_counter() - started)
        if written.action == "return":
            return codec.decode(written.step.output)
        return value

    # -- state -----------------------------------------------------------------------------

    async def state_set(self, value: Any) -> dict[str, Any]:
        """Replaces the run's state (any JSON value); every write is kept as a version."""
        self._check_alive("run.state_set")
        encoded = codec.encode(value, what="run state")
        return await self._write_state(encoded, patch=False)

    async def state_patch(self, patch: dict[str, Any]) -> dict[str, Any]:
        """Shallow-merges `patch` (a dict) into the run's state."""
        if not isinstance(patch, dict):
            raise TypeError(f"state_patch takes a dict, got {type(patch).__name__}")
        self._check_alive("run.state_patch")
        encoded = codec.encode(patch, what="run state patch")
        return await self._write_state(encoded, patch=True)

    async def _write_state(self, value: Any, *, patch: bool) -> dict[str, Any]:
        frame = _current_step.get()
        step = frame.name if frame is not None and frame.run is self else None
        await self._flush_checkpoints()
        state = await self._store.write_state(
            self.run_id, self._owner, value, patch=patch, step=step
        )
        return {**state, "value": codec.decode(state["value"])}

    async def state_get(self) -> Any:
        """The run's current state value, or None if none was written."""
        state = await self._store.read_state(self.run_id)
        return codec.decode(state["value"]) if state else None

    # -- usage -----------------------------------------------------------------------------

    async def usage_record(
        self,
        *,
        kind: str = "llm",
        provider: str | None = None,
        model: str | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        total_tokens: int | None = None,
        cost_usd: float | None = None,
        quantity: float | None = None,
        unit: str | None = None,
        label: str | None = None,
        metadata: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> bool:
        """Adds a record to the run's usage ledger; returns False if it was already recorded.

        Inside a step the record belongs to that step's execution; a replayed step records
        nothing, and a re-invocation that re-executes a step records that real new spend.
        Outside a step the n-th record of an attempt has the key `run:n`, so re-running the
        workflow function after a crash does not count it twice. Pass `key` to choose your own.
        """
        self._check_alive("run.usage_record")
        for field_name, amount in (
            ("input_tokens", input_tokens),
            ("output_tokens", output_tokens),
            ("total_tokens", total_tokens),
        ):
            if amount is not None and (
                not isinstance(amount, int) or isinstance(amount, bool) or not 0 <= amount < 2**63
            ):
                raise ValueError(
                    f"usage_record: {field_name} must be an integer >= 0, got "
                    f"{describe_number(amount)}"
                )
        for field_name, number in (("cost_usd", cost_usd), ("quantity", quantity)):
            if number is not None and (
                not isinstance(number, (int, float))
                or isinstance(number, bool)
                or not 0 <= number < 1e9  # before isfinite, which overflows on a huge int
                or not math.isfinite(number)
            ):
                raise ValueError(
                    f"usage_record: {field_name} must be a finite number >= 0 and below 1e9, "
                    f"got {describe_number(number)}"
                )
        for field_name, text in (
            ("kind", kind),
            ("provider", provider),
            ("model", model),
            ("label", label),
            ("unit", unit),
            ("key", key),
        ):
            _check_text(field_name, text)
        frame = _current_step.get()
        in_step = frame is not None and frame.run is self
        if key is not None:
            record_key = f"user:{key}"
        elif in_step:
            frame.usage_seq += 1
            record_key = f"step:{frame.name}:a{self.attempt}.t{frame.try_number}:{frame.usage_seq}"
        else:
            self._usage_seq += 1
            record_key = f"run:{self._usage_seq}"
        step_name = frame.name if in_step else None
        info = UsageInfo(
            run_id=self.run_id,
            workflow=self.workflow,
            step=step_name,
            kind=kind,
            provider=provider,
            model=model,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=(
                total_tokens
                if total_tokens is not None or (input_tokens is None and output_tokens is None)
                else (input_tokens or 0) + (output_tokens or 0)
            ),
            cost_usd=cost_usd,
            quantity=quantity,
            unit=unit,
        )
        if cost_usd is None:
            # Priced by an observer (tidebase_otel's price table) before it is written, so the
            # ledger stores the cost its metrics report.
            cost_usd = _valid_cost(self._tracker.usage_cost(info))
            info = dataclasses.replace(info, cost_usd=cost_usd)
        record = UsageRecord(
            key=record_key,
            step_name=step_name,
            kind=kind,
            provider=provider,
            model=model,
            label=label,
            quantity=quantity,
            unit=unit,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=total_tokens,
            cost_usd=cost_usd,
            metadata=codec.encode(metadata, what="usage metadata") if metadata else None,
        )
        await self._flush_checkpoints()
        inserted = await self._store.record_usage(self.run_id, self._owner, record)
        if inserted:
            self._tracker.usage_recorded(info)
        return inserted


def _valid_cost(cost: Any) -> float | None:
    """An observer's price, if it is one the ledger can store (else the record stays unpriced)."""
    if isinstance(cost, int | float) and not isinstance(cost, bool) and 0 <= cost < 1e9:
        return float(cost)
    if cost is not None:
        _log.warning("an observer priced a usage record at %r; it is stored without a cost", cost)
    return None


def current_run() -> RunContext | None:
    """The run whose step is executing in this context (e.g. inside an Agents SDK tool)."""
    frame = _current_step.get()
    return frame.run if frame is not None else None


def current_step_name() -> str | None:
    frame = _current_step.get()
    return frame.name if frame is not None else None


class AsyncTidebase:
    """Client for durable runs. Direct mode with a postgresql:// URL, server mode with http(s)://.

    The URL comes from `url`, else TIDEBASE_URL, else http://localhost:7373.
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        lease_ms: int | None = None,
        observers: Sequence[RunObserver] = (),
        auto_migrate: bool = True,
        pipeline_checkpoints: bool | None = None,
    ):
        self.url = url or os.environ.get("TIDEBASE_URL") or DEFAULT_URL
        self.api_key = api_key if api_key is not None else os.environ.get("TIDEBASE_API_KEY")
        if not self.url.startswith(("postgres://", "postgresql://", "http://", "https://")):
            source = "url" if url else "TIDEBASE_URL"
            raise ConfigurationError(
                f"{source} must be a postgresql:// URL (direct mode) or an http(s):// URL "
                f"(server mode), got {self.url.split('@')[-1]!r}"
            )
        self.lease_ms = (
            _check_lease_ms(lease_ms, "lease_ms") if lease_ms is not None else _lease_ms_default()
        )
        self._observers = list(observers)
        self.pipeline_checkpoints = (
            _env_flag("TIDEBASE_PIPELINE_CHECKPOINTS")
            if pipeline_checkpoints is None
            else bool(pipeline_checkpoints)
        )
        self.workflows: dict[str, Callable[[RunContext, Any], Awaitable[Any] | Any]] = {}
        self._auto_migrate = auto_migrate
        self._store: Store | None = None
        self._store_lock = asyncio.Lock()
        self._workers: set[Any] = set()

    @property
    def mode(self) -> str:
        return "server" if self.url.startswith(("http://", "https://")) else "direct"

    async def store(self) -> Store:
        """The connected store (connecting on first use)."""
        if self._store is not None:
            return self._store
        async with self._store_lock:
            if self._store is None:
                self._store = await self._connect()
        return self._store

    async def _connect(self) -> Store:
        if self.mode == "direct":
            from tidebase.store.postgres import PostgresStore

            return await PostgresStore.connect(self.url, auto_migrate=self._auto_migrate)
        try:
            from tidebase.store.http import HttpStore
        except ImportError:
            raise ConfigurationError(
                f"server mode ({self.url}) is not available yet in this version; "
                "use a postgresql:// URL for direct mode"
            ) from None
        return await HttpStore.connect(self.url, api_key=self.api_key)

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None

    async def __aenter__(self) -> AsyncTidebase:
        await self.store()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def run(
        self,
        workflow_name: str,
        fn: Callable[[RunContext, Any], Awaitable[Any] | Any],
        *,
        run_id: str | None = None,
        input: Any = None,
        recovery_webhook: str | None = None,
        create: bool = True,
        observers: Sequence[RunObserver] = (),
    ) -> Any:
        """Runs (or resumes) `fn(run, input)` as run `run_id` of `workflow_name`.

        A new id is made when `run_id` is None; an unknown `run_id` is created (so callers can
        use their own ids, e.g. a job id). A completed run returns its stored result without
        calling `fn`. The user's exception is re-raised after the failure is recorded.
        `recovery_webhook`: a URL `tidebase serve` POSTs a signed recovery request to when the
        run fails or its worker's lease expires (see `tidebase.recovery`).
        A run cancelled meanwhile (`tide.cancel`) stops at its next step boundary or lease
        heartbeat (the workflow function is cancelled) and raises `RunCancelled`.
        `create=False` only resumes: an unknown `run_id` raises `RunNotFound`. `observers` are
        added to the client's observers for this call.
        """
        _check_name("workflow name", workflow_name)
        if run_id is None:
            run_id = f"run_{uuid.uuid4().hex}"
        _check_name("run id", run_id)
        if recovery_webhook is not None:
            check_webhook_url(recovery_webhook)
        return await self._run(
            workflow_name,
            fn,
            run_id,
            input,
            _worker_id(),
            recovery_webhook=recovery_webhook,
            create=create,
            observers=observers,
        )

    async def _run(
        self,
        workflow_name: str,
        fn: Callable[[RunContext, Any], Awaitable[Any] | Any],
        run_id: str,
        input: Any,
        owner: str,
        *,
        recovery_webhook: str | None = None,
        outcome: AttemptOutcome | None = None,
        create: bool = True,
        observers: Sequence[RunObserver] = (),
    ) -> Any:
        """One attempt under lease owner `owner` (a queue worker passes its claim's owner, so
        the attempt the claim counted is continued). `outcome` receives whether a failure
        requeued the run."""
        encoded_input = (
            codec.encode(input, what=f"input of run {run_id!r}") if input is not None else None
        )
        store = await self.store()
        info = AttemptInfo(run_id=run_id, workflow=workflow_name)
        tracker = _start_attempt([*global_observers(), *self._observers, *observers], info)
        try:
            begun = await store.begin_run(
                run_id,
                workflow_name,
                encoded_input,
                owner,
                self.lease_ms,
                create=create,
                span=tracker.span_ref,
                recovery_webhook=recovery_webhook,
            )
        except BaseException as exc:
            tracker.finished("failed", error=exc)
            raise
        run_row = begun.run
        if begun.outcome != "begun":
            outcome_name = begun.outcome
            if (
                outcome_name == "completed"
                and encoded_input is not None
                and not same_json(run_row.get("input"), encoded_input)
            ):
                # Its stored result answers another input: refuse rather than return a
                # stale answer (the rule for runs that are not yet completed, and for steps).
                outcome_name = "input_mismatch"
            return self._not_begun(outcome_name, run_row, run_id, workflow_name, tracker)

        info.attempt = int(run_row["attempt"])
        info.previous = begun.previous
        tracker.begun(info)
        stored_input = codec.decode(run_row.get("input"))
        ctx = RunContext(
            store=store,
            run_id=run_id,
            workflow=workflow_name,
            attempt=info.attempt,
            owner=owner,
            lease_ms=self.lease_ms,
            input=input if input is not None else stored_input,
            steps=begun.steps,
            tracker=tracker,
            pipeline_checkpoints=self.pipeline_checkpoints,
        )
        heartbeat: asyncio.Task[None] | None = None
        try:
            with tracker.active():
                # The workflow function runs in its own task (same context), so a cancellation
                # seen by the heartbeat can stop the user's code promptly.
                work = asyncio.ensure_future(_call_workflow(fn, ctx))
                heartbeat = asyncio.create_task(
                    self._heartbeat(store, ctx, work), name=f"tidebase-lease-{run_id}"
                )
                try:
                    try:
                        result = await work
                    except asyncio.CancelledError:
                        current = asyncio.current_task()
                        if (
                            isinstance(ctx._stopped, RunCancelled)
                            and current is not None
                            and not current.cancelling()
                        ):
                            raise ctx._stopped from None
                        raise
                    encoded = codec.encode(result, what=f"result of run {run_id!r}")
                    await ctx._flush_checkpoints()
                except BaseException as exc:
                    requeued = await self._record_failure(store, ctx, exc, tracker)
                    if outcome is not None:
                        outcome.requeued = requeued
                    raise
                await store.complete_run(run_id, owner, encoded)
                tracker.finished("completed")
                return result
        finally:
            ctx._ended = True
            if heartbeat is not None:
                heartbeat.cancel()

    def _not_begun(
        self,
        outcome: str,
        run_row: dict[str, Any],
        run_id: str,
        workflow: str,
        tracker: AttemptTracker,
    ) -> Any:
        if outcome == "completed":
            tracker.finished("already_completed")
            return codec.decode(run_row.get("result"))
        if outcome == "leased":
            error: TidebaseError = RunLeased(
                run_id, run_row.get("lease_owner"), run_row.get("lease_expires_at")
            )
        elif outcome == "cancelled":
            error = RunCancelled(run_id, run_row.get("cancel_reason"))
        elif outcome == "input_mismatch":
            error = RunInputMismatch(run_id)
        elif outcome == "workflow_mismatch":
            error = WorkflowMismatch(run_id, run_row.get("workflow_name", "?"), workflow)
        else:
            error = TidebaseError(f"run {run_id!r}: unexpected begin outcome {outcome!r}")
        tracker.finished(outcome, error=error)
        raise error

    async def _record_failure(
        self, store: Store, ctx: RunContext, exc: BaseException, tracker: AttemptTracker
    ) -> bool:
        """Records how the attempt ended; True when the failure requeued the run."""
        if isinstance(exc, (LeaseLost, RunCancelled)):
            tracker.finished(
                "cancelled" if isinstance(exc, RunCancelled) else "lease_lost", error=exc
            )
            return False
        if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
            # Interrupted, not failed: release the lease so the next invocation can resume at
            # once (the run stays as it is). Shielded: our own task is being cancelled.
            try:
                await asyncio.shield(self._flush_then_release(store, ctx))
            except BaseException as release_error:  # noqa: BLE001 - best effort on the way out
                _log.warning("could not release run %r: %r", ctx.run_id, release_error)
            tracker.finished("interrupted", error=exc)
            return False
        await ctx._keep_finished_steps()
        # Parked, never requeued or retried blindly, whatever the workflow raised in the end
        # (the step's own error, a wrapper, an ExceptionGroup, something unrelated).
        failure_class = "manual_review" if ctx._parked_steps else None
        requeued = False
        try:
            requeued = bool(
                await store.fail_run(ctx.run_id, ctx.lease_owner, error_payload(exc), failure_class)
            )
        except RunCancelled as cancelled:
            # Cancelled while failing: the cancel stands (a failure never resurrects a run).
            _log.info("run %r was cancelled before its failure was recorded", ctx.run_id)
            tracker.finished("cancelled", error=cancelled)
            return False
        except Exception as write_error:  # noqa: BLE001 - the user's exception must surface
            _log.warning("could not record failure of run %r: %s", ctx.run_id, write_error)
        tracker.finished("failed", error=exc)
        return requeued

    @staticmethod
    async def _flush_then_release(store: Store, ctx: RunContext) -> None:
        await ctx._keep_finished_steps()
        await store.release_run(ctx.run_id, ctx.lease_owner)

    async def _heartbeat(
        self, store: Store, ctx: RunContext, work: asyncio.Future[Any] | None = None
    ) -> None:
        """Keeps the lease alive; on cancellation or a lost lease, stops the workflow: later
        steps raise, and a cancellation also cancels `work` (the workflow function's task)."""
        interval = self.lease_ms / 3000.0
        while True:
            await asyncio.sleep(interval)
            try:
                await store.heartbeat(ctx.run_id, ctx.lease_owner, self.lease_ms)
            except (LeaseLost, RunCancelled) as exc:
                ctx._stopped = exc
                _log.warning("run %s: %s", ctx.run_id, exc)
                if isinstance(exc, RunCancelled) and work is not None:
                    work.cancel()
                return
            except Exception as exc:  # noqa: BLE001 - keep trying; the lease has slack
                _log.warning("run %s: lease heartbeat failed: %s", ctx.run_id, exc)

    # -- queues and cancellation -----------------------------------------------------------

    async def enqueue(
        self,
        workflow: str,
        *,
        queue: str = "default",
        input: Any = None,
        dedupe_key: str | None = None,
        delay: float | _dt.timedelta | None = None,
        run_at: _dt.datetime | None = None,
        max_attempts: int = 1,
        priority: int = 0,
        deadline: float | _dt.timedelta | _dt.datetime | None = None,
        recovery_webhook: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Enqueued:
        """Puts a run of `workflow` on `queue` for a worker (`tide.work`) to execute.

        `dedupe_key`: while a run with this key is queued or running in the queue, enqueueing
        again returns that run (`deduplicated=True`). `delay` (seconds or timedelta) or `run_at`
        (aware datetime) postpone it; higher `priority` is claimed first. A failed attempt is
        retried with exponential backoff (5 s·2^(attempt−1), at most 5 min) until
        `max_attempts`. `deadline` (seconds/timedelta from now, or a datetime): past it the
        reconciler cancels the run with reason `deadline`.
        """
        return await enqueue_run(
            self,
            workflow,
            queue=queue,
            input=input,
            dedupe_key=dedupe_key,
            delay=delay,
            run_at=run_at,
            max_attempts=max_attempts,
            priority=priority,
            deadline=deadline,
            recovery_webhook=recovery_webhook,
            metadata=metadata,
        )

    async def work(
        self,
        queues: str | Sequence[str],
        *,
        concurrency: int = 1,
        poll_interval: float = 0.5,
        grace_period: float = 30.0,
        reconcile: bool | None = None,
        until_idle: bool = False,
        handle_signals: bool = True,
    ) -> None:
        """Claims and executes queued runs of the registered workflows until stopped.

        Up to `concurrency` runs at a time. On SIGTERM/SIGINT (when `handle_signals`) or
        `tide.stop_work()` it stops claiming, lets current runs finish for `grace_period`
        seconds, then interrupts them, releasing their leases so another worker takes them
        over at once. `reconcile` (default: on in direct mode, off in server mode, where
        `tidebase serve` does it) runs reconciler ticks in this worker. `until_idle` returns
        once no run is ready and none is executing (handy in tests and batch jobs).
        """
        from tidebase.worker import Worker

        worker = Worker(
            self,
            [queues] if isinstance(queues, str) else list(queues),
            concurrency=concurrency,
            poll_interval=poll_interval,
            grace_period=grace_period,
            reconcile=self.mode == "direct" if reconcile is None else reconcile,
            until_idle=until_idle,
        )
        self._workers.add(worker)
        try:
            await worker.run(handle_signals=handle_signals)
        finally:
            self._workers.discard(worker)

    def stop_work(self) -> None:
        """Asks every `work()` loop of this client to shut down gracefully (as SIGTERM does)."""
        for worker in list(self._workers):
            worker.stop()

    async def configure_queue(
        self, queue: str, *, concurrency: int | None = None, rate_per_minute: int | None = None
    ) -> dict[str, Any]:
        """Sets the queue's caps, replacing earlier ones (None: no cap): at most `concurrency`
        runs of the queue running at once, at most `rate_per_minute` claims per minute, across
        all workers."""
        _check_name("queue name", queue)
        for name, value in (("concurrency", concurrency), ("rate_per_minute", rate_per_minute)):
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 10**6
            ):
                raise ValueError(f"{name} must be an integer 1..1000000 or None, got {value!r}")
        store = await self.store()
        return await store.configure_queue(
            queue, concurrency=concurrency, rate_per_minute=rate_per_minute
        )

    async def queues(self) -> list[dict[str, Any]]:
        """Every queue: run counts by status, ready runs, and its config."""
        store = await self.store()
        return await store.list_queues()

    async def cancel(
        self, run_id: str, *, reason: str | None = None, actor: str | None = None
    ) -> dict[str, Any]:
        """Cancels a run, for good: it is never begun, claimed, completed or failed again.

        A worker executing it stops at its next step boundary or lease heartbeat and raises
        `RunCancelled`. Cancelling a cancelled run changes nothing; a completed run raises
        `RunAlreadyCompleted`. Returns the run (wire shape).
        """
        _check_name("run id", run_id)
        store = await self.store()
        result = await store.cancel_run(run_id, reason, actor)
        notify_cancelled(
            [*global_observers(), *self._observers],
            CancelInfo(run_id=run_id, reason=reason, actor=actor, outcome=result["outcome"]),
        )
        if result["outcome"] == "completed":
            raise RunAlreadyCompleted(run_id)
        return result["run"]

    # -- inspection ------------------------------------------------------------------------

    def workflow(
        self, name: str
    ) -> Callable[[Callable[[RunContext, Any], Any]], Callable[[RunContext, Any], Any]]:
        """Registers `fn(run, input)` under `name`, for queue workers and recovery webhooks."""
        _check_name("workflow name", name)

        def register(fn: Callable[[RunContext, Any], Any]) -> Callable[[RunContext, Any], Any]:
            existing = self.workflows.get(name)
            if existing is not None and existing is not fn:
                raise ValueError(f"workflow {name!r} is already registered to {existing!r}")
            self.workflows[name] = fn
            return fn

        return register

    async def get_run(self, run_id: str) -> dict[str, Any]:
        """Everything stored about a run: the run, attempts, steps, usage, events, state."""
        store = await self.store()
        return await store.run_detail(run_id)  # type: ignore[attr-defined]
