"""The store interface the SDK talks to, with two implementations: Postgres (direct) and HTTP.

Every write made on behalf of a run attempt carries the attempt's lease owner and is fenced by
it in the database: a worker that lost the run writes nothing and gets `LeaseLost`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tidebase.hooks import SpanRef, UsageAmount


@dataclass(slots=True)
class StepRecord:
    """A step as the store knows it. `output` is the encoded JSON (present when completed)."""

    id: str
    name: str
    status: str
    input_hash: str
    options: dict[str, Any] = field(default_factory=dict)
    resume_decision: str | None = None
    run_attempt: int | None = None
    executed_by: SpanRef | None = None
    output: Any = None
    error: Any = None
    usage: list[UsageAmount] = field(default_factory=list)
    parent_name: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepRecord:
        ref = None
        if data.get("traceId") and data.get("spanId"):
            ref = SpanRef(data["traceId"], data["spanId"])
        usage = [
            UsageAmount(
                provider=u.get("provider"),
                model=u.get("model"),
                input_tokens=int(u.get("inputTokens") or 0),
                output_tokens=int(u.get("outputTokens") or 0),
                cost_usd=float(u.get("costUsd") or 0.0),
            )
            for u in data.get("usage") or []
        ]
        return cls(
            id=data["id"],
            name=data["name"],
            status=data["status"],
            input_hash=data["inputHash"],
            options=data.get("options") or {},
            resume_decision=data.get("resumeDecision"),
            run_attempt=data.get("runAttempt"),
            executed_by=ref,
            output=data.get("output"),
            error=data.get("error"),
            usage=usage,
            parent_name=data.get("parentName"),
        )


@dataclass(slots=True)
class BeginResult:
    """What beginning an attempt returns.

    outcome: begun | completed | leased | cancelled | workflow_mismatch. `run` holds the run row
    (snake_case keys); `steps` every step of the run when begun.
    """

    outcome: str
    run: dict[str, Any]
    steps: list[StepRecord] = field(default_factory=list)
    previous: SpanRef | None = None


@dataclass(slots=True)
class StepWrite:
    """Result of a step write. action: execute | completed | failed | return (already completed)."""

    action: str
    step: StepRecord


@dataclass(frozen=True, slots=True)
class StepKey:
    """Identifies a step write: which run, under whose lease, which step and its input."""

    run_id: str
    owner: str
    name: str
    parent: str | None
    input_hash: str
    input: Any
    options: dict[str, Any]


MAX_CHECKPOINT_BATCH = 1000  # checkpoints per `complete_steps` request in server mode


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A pure step's output waiting to be written (pipelined checkpoints)."""

    key: StepKey
    output: Any
    span: SpanRef | None


@dataclass(frozen=True, slots=True)
class UsageRecord:
    key: str
    step_name: str | None
    kind: str = "custom"
    provider: str | None = None
    model: str | None = None
    label: str | None = None
    quantity: float | None = None
    unit: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    cost_usd: float | None = None
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class EnqueueRequest:
    """A run to enqueue. `input` is encoded JSON; times are absolute (`run_at`) or relative to
    the database clock (`delay_ms`, `deadline_ms`); `span` is the enqueuing span (each attempt's
    processing span links to it)."""

    workflow: str
    input: Any = None
    metadata: dict[str, Any] | None = None
    recovery_webhook: str | None = None
    channels: list[dict[str, Any]] | None = None
    dedupe_key: str | None = None
    run_at: Any = None
    delay_ms: int | None = None
    max_attempts: int = 1
    priority: int = 0
    deadline_ms: int | None = None
    span: SpanRef | None = None


class Store(Protocol):
    """What the SDK needs from a store."""

    url_for_display: str

    async def begin_run(
        self,
        run_id: str,
        workflow: str,
        input: Any,
        owner: str,
        lease_ms: int,
        *,
        create: bool,
        span: SpanRef | None,
        recovery_webhook: str | None = None,
    ) -> BeginResult: ...

    async def heartbeat(self, run_id: str, owner: str, lease_ms: int) -> None: ...

    async def release_run(self, run_id: str, owner: str) -> None: ...

    async def complete_run(self, run_id: str, owner: str, result: Any) -> None: ...

    async def fail_run(
        self, run_id: str, owner: str, error: dict[str, Any], failure_class: str | None
    ) -> bool: ...

    async def cancel_run(
        self, run_id: str, reason: str | None, actor: str | None
    ) -> dict[str, Any]: ...

    async def enqueue(self, queue: str, request: EnqueueRequest) -> dict[str, Any]: ...

    async def claim(
        self, queues: list[str], owner: str, limit: int, lease_ms: int
    ) -> list[dict[str, Any]]: ...

    async def configure_queue(
        self,
        queue: str,
        *,
        concurrency: int | None,
        rate_per_minute: int | None,
        invoke_url: str | None = None,
    ) -> dict[str, Any]: ...

    async def list_queues(self) -> list[dict[str, Any]]: ...

    async def start_step(self, key: StepKey, lease_ms: int) -> StepWrite: ...

    async def complete_step(
        self, key: StepKey, output: Any, span: SpanRef | None, lease_ms: int
    ) -> StepWrite: ...

    async def complete_steps(self, checkpoints: Sequence[Checkpoint], lease_ms: int) -> None:
        """Writes the checkpoints of one run's pure steps, in order, in one transaction."""
        ...

    async def fail_step(
        self,
        key: StepKey,
        error: dict[str, Any],
        status: str,
        resume_decision: str,
        span: SpanRef | None,
    ) -> StepWrite: ...

    async def record_usage(self, run_id: str, owner: str, record: UsageRecord) -> bool: ...

    async def write_state(
        self, run_id: str, owner: str | None, value: Any, *, patch: bool, step: str | None
    ) -> dict[str, Any]: ...

    async def read_state(self, run_id: str) -> dict[str, Any] | None: ...

    async def close(self) -> None: ...
