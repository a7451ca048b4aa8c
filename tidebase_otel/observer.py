"""`TidebaseObserver`: a tidebase `RunObserver` that makes every run attempt and step a span.

Spans (names and attributes are listed in the README's "Telemetry" section):

* ``run {workflow}``: one per run attempt, started before the run lease is taken (its span
  context is stored with the attempt) and current while the workflow function runs. Linked to
  the previous attempt's run span. Parent: whatever span is current when ``tide.run`` is called
  (none: each attempt is its own trace).
* ``step {name}``: one per step per attempt, executed or replayed. An executed step's span is
  current while the step function runs, so user spans, HTTP-client spans and the Agents SDK's
  spans nest under it; its span context is stored with the checkpoint. A replayed step's span
  (zero length) links to the span that executed it. A step called inside an Agents tool nests
  under that tool's ``execute_tool`` span.

Metrics are recorded through `TidebaseMetrics`. Nothing here raises into tidebase: the hook
layer guards every call, and tidebase never waits on telemetry.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from tidebase import __version__ as _tidebase_version
from tidebase.errors import StepFailedPermanently, StepNeedsReview
from tidebase.hooks import (
    AttemptInfo,
    AttemptTracker,
    ReplayInfo,
    RunObserver,
    SpanRef,
    StepInfo,
    StepTracker,
    UsageInfo,
    log_observer_failure,
)

from . import _semconv as sc
from .metrics import TidebaseMetrics
from .prices import PriceSpec, PriceTable

if TYPE_CHECKING:  # both need openai-agents, which is optional
    from .agents import OTelAgentsProcessor
    from .ledger import AgentsUsageLedger

__all__ = ["TidebaseObserver"]

_SCOPE = "tidebase_otel"
# The innermost tidebase span whose code is running here: a step span inside the step function,
# else the run span inside the workflow function. Kept apart from the OTel context because other
# instrumentations may make their own spans current.
_active_span: contextvars.ContextVar[otel_trace.Span | None] = contextvars.ContextVar(
    "tidebase_otel_active_span", default=None
)
_MAX_NAME_CHARS = 100
_MAX_DESCRIPTION_CHARS = 256


def _short(text: str, limit: int = _MAX_NAME_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def span_ref(span: otel_trace.Span) -> SpanRef | None:
    """The span's W3C ids, or None when it is not sampled (nothing to link to later)."""
    ctx = span.get_span_context()
    if not ctx.is_valid or not ctx.trace_flags.sampled:
        return None
    # The formats of otel_trace.format_trace_id / format_span_id, inlined (once per step).
    return SpanRef(f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")


def span_context(ref: SpanRef | None) -> SpanContext | None:
    """A remote, sampled span context for a stored `SpanRef` (None if absent or malformed)."""
    if ref is None:
        return None
    try:
        ctx = SpanContext(
            trace_id=int(ref.trace_id, 16),
            span_id=int(ref.span_id, 16),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
    except (TypeError, ValueError):
        return None
    return ctx if ctx.is_valid else None


def _start_span(tracer: otel_trace.Tracer, name: str, **kwargs: Any) -> otel_trace.Span:
    """`tracer.start_span`, or a non-recording span when it raises (e.g. a span processor's
    `on_start` does): the run's metrics must not depend on its spans."""
    try:
        return tracer.start_span(name, **kwargs)
    except Exception:
        log_observer_failure("tidebase_otel: starting a span")
        return otel_trace.INVALID_SPAN


def error_type(error: BaseException) -> str:
    """`error.type`: the exception's fully qualified class name (builtins unqualified)."""
    cls = type(error)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _error_status(error: BaseException | None, fallback: str) -> Status:
    if error is None:
        return Status(StatusCode.ERROR, fallback)
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return Status(StatusCode.ERROR, _short(text, _MAX_DESCRIPTION_CHARS))


def _step_attributes(info: StepInfo, replayed: bool) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        sc.TIDEBASE_RUN_ID: info.run_id,
        sc.TIDEBASE_RUN_ATTEMPT: info.attempt,
        sc.TIDEBASE_WORKFLOW: info.workflow,
        sc.TIDEBASE_STEP_NAME: info.name,
        sc.TIDEBASE_STEP_INPUT_HASH: info.input_hash,
        sc.TIDEBASE_STEP_REPLAYED: replayed,
    }
    if info.side_effects:
        attrs[sc.TIDEBASE_STEP_SIDE_EFFECTS] = list(info.side_effects)
    if info.idempotency_key is not None:
        attrs[sc.TIDEBASE_STEP_IDEMPOTENCY_KEY] = info.idempotency_key
    if info.replay is not None:
        attrs[sc.TIDEBASE_STEP_REPLAY_MODE] = info.replay
    if info.retries:
        attrs[sc.TIDEBASE_STEP_MAX_RETRIES] = info.retries
    if info.parent is not None:
        attrs[sc.TIDEBASE_STEP_PARENT] = info.parent
    return attrs


class _Backlog:
    """Span ends and step metrics that an attempt leaves for the event loop's next idle moment.

    Ending a step span and recording its two metric points is ~20 us of SDK work when hot, but
    several times that right after a database round trip, when caches are cold: the bulk of
    what telemetry added to a trivial step. Deferred with `loop.call_soon`, it runs when the
    run next waits (typically on the next step's checkpoint write, while Postgres works), in a
    batch that adds the step counters once per outcome. Span timestamps are the real ones; the
    spans of finished steps are still handed to the span processor before the process can do
    anything else slow (a kill -9 during the next step loses none of them); and the attempt
    drains its backlog when it ends, so everything is recorded before `tide.run` returns.
    """

    __slots__ = ("_durations", "_jobs", "_metrics", "_scheduled", "_steps", "_workflow")

    def __init__(self, metrics: TidebaseMetrics, workflow: str) -> None:
        self._metrics = metrics
        self._workflow = workflow
        self._jobs: list[Callable[[], None]] = []
        self._steps: dict[str, int] = {}  # outcome -> steps that ended with it
        self._durations: list[tuple[str, float]] = []  # (outcome, seconds)
        self._scheduled = False

    def defer(self, job: Callable[[], None]) -> None:
        self._jobs.append(job)
        self._schedule()

    def step_ended(self, outcome: str, duration_s: float | None) -> None:
        self._steps[outcome] = self._steps.get(outcome, 0) + 1
        if duration_s is not None:
            self._durations.append((outcome, duration_s))
        self._schedule()

    def _schedule(self) -> None:
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on an event loop (hooks called directly): no deferring
            self.drain()
            return
        self._scheduled = True
        loop.call_soon(self.drain)

    def drain(self) -> None:
        """Does everything deferred so far (each job guarded: telemetry never fails a run)."""
        self._scheduled = False
        jobs, self._jobs = self._jobs, []
        steps, self._steps = self._steps, {}
        durations, self._durations = self._durations, []
        try:
            for job in jobs:
                try:
                    job()
                except Exception:
                    log_observer_failure("tidebase_otel: ending a deferred span")
            self._metrics.steps_ended(self._workflow, steps, durations)
        except Exception:
            log_observer_failure("tidebase_otel: recording step metrics")


class TidebaseObserver(RunObserver):
    """Spans and metrics for every run attempt and step of the clients it observes.

    `tidebase_otel.instrument()` registers one for every client. To observe a single client
    instead, pass one to it: ``AsyncTidebase(url, observers=[TidebaseObserver()])``.

    ``tracer_provider`` / ``meter_provider`` default to the global ones (resolved lazily, so
    providers set after this object is made are used). ``prices`` overlays ``TIDEBASE_PRICES``.
    ``agents_processor`` lets steps run inside an Agents tool nest under its ``execute_tool``
    span; ``agents_usage`` writes Agents model usage to the ledger (``record_agents_usage``).
    """

    def __init__(
        self,
        tracer_provider: otel_trace.TracerProvider | None = None,
        meter_provider: otel_metrics.MeterProvider | None = None,
        *,
        prices: PriceTable | Mapping[str, PriceSpec] | None = None,
        agents_processor: OTelAgentsProcessor | None = None,
        agents_usage: AgentsUsageLedger | None = None,
    ) -> None:
        self._tracer = otel_trace.get_tracer(
            _SCOPE, _tidebase_version, tracer_provider=tracer_provider
        )
        meter = otel_metrics.get_meter(_SCOPE, _tidebase_version, meter_provider=meter_provider)
        self.prices = PriceTable.resolve(prices)
        self._metrics = TidebaseMetrics(meter, self.prices)
        self._agents = agents_processor
        self._ledger = agents_usage

    def attempt(self, info: AttemptInfo) -> AttemptTracker:
        return _AttemptSpan(self, info)


class _AttemptSpan(AttemptTracker):
    def __init__(self, observer: TidebaseObserver, info: AttemptInfo) -> None:
        self._obs = observer
        self._info = info
        self._span = _start_span(
            observer._tracer,
            sc.SPAN_RUN.format(workflow=_short(info.workflow)),
            kind=SpanKind.INTERNAL,
            attributes={sc.TIDEBASE_RUN_ID: info.run_id, sc.TIDEBASE_WORKFLOW: info.workflow},
        )
        self.span_ref = span_ref(self._span)
        self._open_steps: set[_StepSpan] = set()
        self._executed: set[str] = set()
        self._ended = False
        self._backlog = _Backlog(observer._metrics, info.workflow)

    # ------------------------------------------------------------------ lifecycle
    def begun(self, info: AttemptInfo) -> None:
        self._span.set_attribute(sc.TIDEBASE_RUN_ATTEMPT, info.attempt)
        previous = span_context(info.previous)
        if previous is not None:
            self._span.add_link(previous, {sc.TIDEBASE_LINK_TYPE: sc.LINK_PREVIOUS_ATTEMPT})

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        token = _active_span.set(self._span)
        try:
            with otel_trace.use_span(
                self._span,
                end_on_exit=False,
                record_exception=False,
                set_status_on_exception=False,
            ):
                yield
        finally:
            _active_span.reset(token)

    def finished(self, status: str, *, error: BaseException | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        for step in list(self._open_steps):
            step.interrupted(error)
        self._backlog.drain()
        if isinstance(error, StepNeedsReview | StepFailedPermanently):
            self._parked_step(error)
        span = self._span
        try:  # a raising span processor must not cost the metric point
            span.set_attribute(sc.TIDEBASE_RUN_STATUS, status)
            if status not in sc.RUN_STATUSES_OK:
                if error is not None:
                    span.set_attribute(sc.ERROR_TYPE, error_type(error))
                    span.record_exception(error, escaped=True)  # out of tide.run
                span.set_status(_error_status(error, status))
            span.end()
        finally:
            self._obs._metrics.run_ended(self._info.workflow, status)

    def _parked_step(self, error: StepNeedsReview | StepFailedPermanently) -> None:
        """A step refused to re-execute before any hook named it (e.g. the step enclosing a
        parked nested step): give it a span too, so the trace says which step and why."""
        name = getattr(error, "step", None)
        if not isinstance(name, str) or name in self._executed:
            return
        self._refused_span(
            name,
            otel_trace.set_span_in_context(self._span),  # the workflow has returned
            {
                sc.TIDEBASE_RUN_ID: self._info.run_id,
                sc.TIDEBASE_RUN_ATTEMPT: self._info.attempt,
                sc.TIDEBASE_WORKFLOW: self._info.workflow,
                sc.TIDEBASE_STEP_NAME: name,
                sc.TIDEBASE_STEP_REPLAYED: False,
            },
            error,
        )

    def refused(self, info: StepInfo, error: BaseException) -> None:
        self._executed.add(info.name)
        attrs = _step_attributes(info, replayed=False)
        self._refused_span(info.name, self._parent_context(), attrs, error)

    def _refused_span(
        self,
        name: str,
        parent: otel_context.Context,
        attrs: dict[str, Any],
        error: BaseException,
    ) -> None:
        """The zero-length span of a step that was not run: parked or failed for good."""
        review = isinstance(error, StepNeedsReview)
        outcome = sc.OUTCOME_MANUAL_REVIEW if review else sc.OUTCOME_FAILED
        attrs[sc.TIDEBASE_STEP_OUTCOME] = outcome
        attrs[sc.TIDEBASE_STEP_TRIES] = 0
        attrs[sc.TIDEBASE_STEP_RESUME_DECISION] = (
            sc.RESUME_MANUAL_REVIEW if review else sc.RESUME_FAIL_HARD
        )
        attrs[sc.ERROR_TYPE] = error_type(error)
        at = time.time_ns()  # nothing ran: the span starts and ends at the same instant
        span = _start_span(
            self._obs._tracer,
            sc.SPAN_STEP.format(step=_short(name)),
            context=parent,
            attributes=attrs,
            start_time=at,
        )
        try:
            span.record_exception(error, escaped=True, timestamp=at)
            span.set_status(_error_status(error, outcome))
            span.end(end_time=at)
        finally:
            self._obs._metrics.step_ended(self._info.workflow, outcome, None)

    # ------------------------------------------------------------------ steps
    def _parent_context(self) -> otel_context.Context:
        ctx = otel_context.get_current()
        agents = self._obs._agents
        # has_open_spans() first: it is a cheap check, and false for every step that is not
        # called from inside an Agents run.
        if agents is not None and agents.has_open_spans():
            active = _active_span.get()
            if active is not None:
                # Inside an Agents run that began under our innermost span (a tool calling a
                # step): nest under the Agents span (e.g. execute_tool), whatever span is
                # current now.
                inner = agents.context_for_current_span(
                    ctx, under=active.get_span_context().span_id
                )
                if inner is not None:
                    return inner
        if not otel_trace.get_current_span(ctx).get_span_context().is_valid:
            # Called from a context that lost the run span (e.g. a callback): keep the tree.
            ctx = otel_trace.set_span_in_context(self._span, ctx)
        return ctx

    def step(self, info: StepInfo) -> StepTracker:
        self._executed.add(info.name)
        return _StepSpan(self, info, self._parent_context())

    def replayed(self, info: ReplayInfo) -> None:
        obs = self._obs
        step = info.step
        links = []
        executed_by = span_context(info.executed_by)
        if executed_by is not None:
            links.append(Link(executed_by, {sc.TIDEBASE_LINK_TYPE: sc.LINK_EXECUTED_BY}))
        attrs = _step_attributes(step, replayed=True)
        attrs[sc.TIDEBASE_STEP_OUTCOME] = sc.OUTCOME_REPLAYED
        if info.usage:  # most steps record no usage: nothing was avoided
            avoided = obs._metrics.replayed(step.workflow, info.usage)
            if avoided.input_tokens or avoided.output_tokens:
                attrs[sc.TIDEBASE_REPLAY_INPUT_TOKENS_AVOIDED] = avoided.input_tokens
                attrs[sc.TIDEBASE_REPLAY_OUTPUT_TOKENS_AVOIDED] = avoided.output_tokens
            if avoided.cost_usd is not None:
                attrs[sc.TIDEBASE_REPLAY_COST_AVOIDED_USD] = avoided.cost_usd
        # A zero-length span at the moment of the replay, made in the backlog's next batch:
        # a resume replays many steps back to back, and this keeps the SDK work off them.
        self._backlog.defer(
            functools.partial(
                self._replay_span, step.name, self._parent_context(), attrs, links, time.time_ns()
            )
        )
        self._backlog.step_ended(sc.OUTCOME_REPLAYED, None)

    def _replay_span(
        self,
        name: str,
        parent: otel_context.Context,
        attrs: dict[str, Any],
        links: list[Link],
        at: int,
    ) -> None:
        span = self._obs._tracer.start_span(
            sc.SPAN_STEP.format(step=_short(name)),
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes=attrs,
            links=links,
            start_time=at,
        )
        span.end(at)

    def usage_recorded(self, info: UsageInfo) -> None:
        ledger = self._obs._ledger
        if ledger is not None:
            ledger.note_hand_record(info.kind)
        self._obs._metrics.usage_recorded(info)

    def usage_cost(self, info: UsageInfo) -> float | None:
        """A record written without `cost_usd` is priced from the price table before it is
        stored: the ledger then holds the cost the cost metric reports."""
        return self._obs._metrics.prices.cost(
            info.model, info.input_tokens, info.output_tokens, info.provider
        )


class _StepSpan(StepTracker):
    """The span of one step (all its tries), and the context manager of each try.

    `running` returns the tracker itself rather than a ``@contextmanager`` generator: that is
    cheaper on every step, and the tries of a step never overlap (the next try begins after
    the previous one has exited).
    """

    __slots__ = (
        "_active_token",
        "_attempt",
        "_context_token",
        "_ended",
        "_info",
        "_last_error",
        "_span",
        "_tries",
        "_usage_token",
        "_usage_writes",
        "span_ref",
    )

    def __init__(self, attempt: _AttemptSpan, info: StepInfo, parent: otel_context.Context) -> None:
        self._attempt = attempt
        self._info = info
        self._span = _start_span(
            attempt._obs._tracer,
            sc.SPAN_STEP.format(step=_short(info.name)),
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes=_step_attributes(info, replayed=False),
        )
        self.span_ref = span_ref(self._span)
        self._tries = 0
        self._last_error: BaseException | None = None
        self._ended = False
        self._usage_token: Any = None  # the ledger's token for the current try
        self._usage_writes: Any = None  # ledger writes of the last try, awaited by settle()
        self._active_token: Any = None
        self._context_token: Any = None
        attempt._open_steps.add(self)

    def running(self, try_number: int) -> _StepSpan:
        self._tries = try_number
        return self

    def __enter__(self) -> None:
        # The step span is current while the step function runs (user, HTTP-client and Agents
        # spans nest under it); _active_span tells the Agents processor which span that is.
        ledger = self._attempt._obs._ledger
        self._usage_token = ledger.begin_try() if ledger is not None else None
        self._active_token = _active_span.set(self._span)
        self._context_token = otel_context.attach(otel_trace.set_span_in_context(self._span))

    def __exit__(self, *exc_info: object) -> None:
        otel_context.detach(self._context_token)
        _active_span.reset(self._active_token)
        ledger = self._attempt._obs._ledger
        if ledger is not None:
            self._usage_writes = ledger.end_try(self._usage_token)

    async def settle(self, try_number: int) -> None:
        ledger = self._attempt._obs._ledger
        writes, self._usage_writes = self._usage_writes, None
        if ledger is not None:
            await ledger.settle(writes)

    def try_failed(self, try_number: int, error: BaseException, will_retry: bool) -> None:
        self._last_error = error
        self._span.record_exception(
            error,
            attributes={sc.TIDEBASE_STEP_TRY: try_number, sc.TIDEBASE_STEP_WILL_RETRY: will_retry},
            escaped=not will_retry,  # the last try's error leaves the step
        )
        if will_retry:
            self._attempt._obs._metrics.step_retried(self._info.workflow)

    def finished(
        self,
        outcome: str,
        *,
        error: BaseException | None = None,
        resume_decision: str | None = None,
        duration_s: float = 0.0,
    ) -> None:
        self._end(outcome, error, resume_decision, duration_s)

    def interrupted(self, error: BaseException | None) -> None:
        """The attempt ended while this step was still running."""
        self._end(sc.OUTCOME_INTERRUPTED, error, None, None)

    def _end(
        self,
        outcome: str,
        error: BaseException | None,
        resume_decision: str | None,
        duration_s: float | None,
    ) -> None:
        if self._ended:
            return
        self._ended = True
        attempt = self._attempt
        attempt._open_steps.discard(self)
        if outcome == sc.OUTCOME_COMPLETED and not self._info.side_effects:
            # The hot path: leave the SDK work to the backlog. A step with side effects ends
            # now: its span is the one to have exported if the process dies right after.
            attempt._backlog.defer(functools.partial(self._end_completed, time.time_ns()))
            attempt._backlog.step_ended(outcome, duration_s)
            return
        try:  # a raising span processor must not cost the metric point
            self._end_span_now(outcome, error, resume_decision)
        finally:
            attempt._obs._metrics.step_ended(self._info.workflow, outcome, duration_s)

    def _end_span_now(
        self, outcome: str, error: BaseException | None, resume_decision: str | None
    ) -> None:
        span = self._span
        attrs: dict[str, Any] = {
            sc.TIDEBASE_STEP_OUTCOME: outcome,
            sc.TIDEBASE_STEP_TRIES: self._tries,
        }
        if resume_decision is not None:
            attrs[sc.TIDEBASE_STEP_RESUME_DECISION] = resume_decision
        if outcome != sc.OUTCOME_COMPLETED:
            if error is not None:
                attrs[sc.ERROR_TYPE] = error_type(error)
                if error is not self._last_error:
                    span.record_exception(error, escaped=True)
            span.set_status(_error_status(error, outcome))
        span.set_attributes(attrs)
        span.end()

    def _end_completed(self, end_time: int) -> None:
        span = self._span
        span.set_attributes(
            {sc.TIDEBASE_STEP_OUTCOME: sc.OUTCOME_COMPLETED, sc.TIDEBASE_STEP_TRIES: self._tries}
        )
        span.end(end_time)
