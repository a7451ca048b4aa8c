"""``record_agents_usage=True``: write each Agents SDK model call's usage to the usage ledger.

The Agents processor reports the usage of every model call (`AgentsUsage`) synchronously, from
inside the SDK, while the step that made the call is running. Writing to the ledger is async,
so the usage is collected per *try* of the step (a context variable set by the step's tracker
around the step function, visible in every task and thread the SDK starts from there). When the
step function returns or raises, the writes start on the step's event loop, and the step
tracker's async ``settle`` hook awaits them, so they land under the run's lease before tidebase
writes the step's checkpoint or failure.

(If the installed tidebase does not await ``StepTracker.settle``, the writes still start when the
step function returns, but race with the rest of the run: a write that reaches the store after
the run ended is refused by the lease fence and logged as a warning.)

Each record is idempotent: its key is ``agents:{agents trace id}:{agents span id}``, unique per
model call, so a record is never written twice. It is written as ``kind="llm"``,
``label="openai-agents"``, with the provider, model, input/output tokens, the cost from the
configured price table (None when the model has no price) and metadata (agent name, requests,
cached input and reasoning output tokens).

Double counting with hand-written records is prevented per step try: when the step's own code
records ``kind="llm"`` usage itself (`run.usage_record(...)`, whose default kind is "llm"),
the automatic records of that try are dropped, because the step is taken to account for its LLM
usage by hand. So a pipeline that already records usage by hand can turn this on without
counting anything twice; usage the step records with another kind ("search", ...) does not
count as hand-recorded LLM usage.

Limits: a model call made outside any tidebase step is not recorded (there is no step to charge
it to); a process that dies while a step runs loses that try's records, as it loses usage a
user would have recorded by hand after `Runner.run` returned.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from typing import TYPE_CHECKING, Any

from tidebase.aio import RunContext, current_run, current_step_name

from . import _semconv as sc
from .prices import PriceTable

if TYPE_CHECKING:
    from .agents import AgentsUsage

__all__ = ["AgentsUsageLedger"]

_log = logging.getLogger(__name__)


class _TryUsage:
    """The Agents usage of one try of one step, and whether the step recorded LLM usage."""

    __slots__ = ("hand_recorded_llm", "lock", "run", "step", "usages", "writes")

    def __init__(self, run: RunContext, step: str) -> None:
        self.run = run
        self.step = step
        self.usages: list[AgentsUsage] = []
        self.hand_recorded_llm = False
        self.lock = threading.Lock()
        self.writes: list[asyncio.Task[None]] = []


_current_try: contextvars.ContextVar[_TryUsage | None] = contextvars.ContextVar(
    "tidebase_otel_agents_usage", default=None
)
# Set while one of our own ledger writes runs, so the observer can tell it from a hand record.
_writing: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "tidebase_otel_writing_agents_usage", default=False
)


class AgentsUsageLedger:
    """Collects `AgentsUsage` per step try and writes it to the run's usage ledger."""

    def __init__(self, prices: PriceTable) -> None:
        self._prices = prices
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ step tracker side
    def begin_try(self) -> contextvars.Token[_TryUsage | None] | None:
        """Called as a try of a step begins (inside the step's context)."""
        run, step = current_run(), current_step_name()
        if run is None or step is None:
            return None
        return _current_try.set(_TryUsage(run, step))

    def end_try(self, token: contextvars.Token[_TryUsage | None] | None) -> _TryUsage | None:
        """Called as the try ends: starts the ledger writes of its model calls."""
        if token is None:
            return None
        current = _current_try.get()
        _current_try.reset(token)
        if current is None:
            return None
        with current.lock:
            usages, current.usages = current.usages, []
            skip = current.hand_recorded_llm
        if not usages:
            return None
        if skip:
            _log.debug(
                "tidebase_otel: step %r recorded its LLM usage by hand; not writing the usage "
                "of its %d Agents model call(s)",
                current.step,
                len(usages),
            )
            return None
        loop = asyncio.get_running_loop()
        for usage in usages:
            # The task copies the current context: the step is still the current step there,
            # so the record belongs to it.
            task = loop.create_task(self._write(current.run, usage))
            current.writes.append(task)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return current

    @staticmethod
    async def settle(try_usage: _TryUsage | None) -> None:
        """Waits until the writes started by `end_try` are done (they never raise)."""
        if try_usage is not None and try_usage.writes:
            await asyncio.gather(*try_usage.writes, return_exceptions=True)

    # ------------------------------------------------------------------ observer side
    @staticmethod
    def is_own_write() -> bool:
        return _writing.get()

    @staticmethod
    def note_hand_record(kind: str) -> None:
        """A record was newly written by user code; LLM records disable ours for this try."""
        if kind != sc.LEDGER_KIND_LLM or _writing.get():
            return
        current = _current_try.get()
        if current is not None:
            with current.lock:
                current.hand_recorded_llm = True

    # ------------------------------------------------------------------ processor side
    def on_usage(self, usage: AgentsUsage) -> None:
        """`OTelAgentsProcessor` usage listener: remember the call for the current step try."""
        current = _current_try.get()
        if current is None:
            return  # not inside a tidebase step: nothing to charge it to
        with current.lock:
            current.usages.append(usage)

    # ------------------------------------------------------------------ writing
    async def _write(self, run: RunContext, usage: AgentsUsage) -> None:
        _writing.set(True)  # this task's own context
        metadata: dict[str, Any] = {
            "requests": usage.requests,
            "agents_trace_id": usage.agents_trace_id,
        }
        if usage.agent_name:
            metadata["agent"] = usage.agent_name
        if usage.cached_input_tokens:
            metadata["cached_input_tokens"] = usage.cached_input_tokens
        if usage.reasoning_output_tokens:
            metadata["reasoning_output_tokens"] = usage.reasoning_output_tokens
        try:
            await run.usage_record(
                kind=sc.LEDGER_KIND_LLM,
                provider=usage.provider,
                model=usage.model,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                total_tokens=usage.input_tokens + usage.output_tokens,
                cost_usd=self._prices.cost(
                    usage.model, usage.input_tokens, usage.output_tokens, usage.provider
                ),
                label=sc.LEDGER_LABEL_AGENTS,
                metadata=metadata,
                key=sc.LEDGER_KEY_AGENTS.format(
                    trace_id=usage.agents_trace_id, span_id=usage.agents_span_id
                ),
            )
        except Exception as exc:
            _log.warning(
                "tidebase_otel: could not write the usage of an Agents model call to the "
                "ledger of run %s: %s",
                run.run_id,
                exc,
            )

    async def drain(self) -> None:
        """Waits for the ledger writes started so far (for tests and orderly shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
