"""The Postgres store (direct mode): asyncpg, a connection pool, and the only place SQL lives.

The checkpoint protocol runs as server-side functions (migrations/002), so each SDK operation
is exactly one round trip; asyncpg prepares each statement once per connection.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg
from asyncpg.exceptions._base import InternalClientError

from tidebase import codec, migrate
from tidebase.embedded import redact_url
from tidebase.errors import (
    InputMismatch,
    LeaseLost,
    RunCancelled,
    RunNotFound,
    SerializationError,
    StoreUnavailable,
    TidebaseError,
)
from tidebase.hooks import SpanRef
from tidebase.store.base import (
    BeginResult,
    Checkpoint,
    EnqueueRequest,
    StepKey,
    StepRecord,
    StepWrite,
    UsageRecord,
)

_CONNECTION_ERRORS = (
    OSError,
    InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    TimeoutError,
)

_BEGIN_RUN = "SELECT tidebase_begin_run($1, $2, $3, $4, $5, $6, $7, $8)"
_START_STEP = "SELECT tidebase_start_step($1, $2, $3, $4, $5, $6, $7, $8)"
_COMPLETE_STEP = "SELECT tidebase_complete_step($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
_FAIL_STEP = "SELECT tidebase_fail_step($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
_RECORD_USAGE = (
    "SELECT tidebase_record_usage($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
)
_WRITE_STATE = "SELECT tidebase_write_state($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"

_HEARTBEAT = """
UPDATE runs SET lease_expires_at = now() + make_interval(secs => $3 / 1000.0)
 WHERE id = $1 AND lease_owner = $2 AND status = 'running'
RETURNING id"""

_RUN_STATUS = "SELECT status, lease_owner, cancel_reason FROM runs WHERE id = $1"

_FINISH_RUN = "SELECT tidebase_finish_run($1, $2, $3, $4, $5, $6)"

_RELEASE_RUN = "SELECT tidebase_release_run($1, $2)"
_SET_RECOVERY_WEBHOOK = "SELECT tidebase_set_recovery_webhook($1, $2)"
_CANCEL_RUN = "SELECT tidebase_wire_cancel_run($1, $2, $3)"
_ENQUEUE = "SELECT tidebase_enqueue($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
_CLAIM = "SELECT tidebase_claim($1, $2, $3, $4)"
_SET_QUEUE_CONFIG = "SELECT tidebase_set_queue_config($1, $2, $3, $4)"
_QUEUES = "SELECT tidebase_queues()"

_READ_STATE = "SELECT run_id, value, version, updated_at FROM run_state WHERE run_id = $1"

_LIST_RUNS = """
SELECT r.id, r.workflow_name, r.status, r.attempt, r.failure_class, r.created_at, r.updated_at,
       (SELECT count(*) FROM steps s
         WHERE s.run_id = r.id AND s.status = 'completed') AS steps_done,
       (SELECT count(*) FROM steps s WHERE s.run_id = r.id) AS steps_total,
       (SELECT COALESCE(sum(total_tokens), 0)
          FROM usage_records u WHERE u.run_id = r.id) AS tokens,
       (SELECT COALESCE(sum(cost_usd), 0) FROM usage_records u WHERE u.run_id = r.id) AS cost_usd
  FROM runs r
 WHERE ($1::text IS NULL OR r.status = $1
        OR ($1 = 'manual_review' AND r.failure_class = 'manual_review'))
   AND ($2::text IS NULL OR r.workflow_name = $2)
 ORDER BY r.created_at DESC
 LIMIT $3"""

_RUN_ROW = "SELECT * FROM runs WHERE id = $1"
_RUN_STEPS = "SELECT * FROM steps WHERE run_id = $1 ORDER BY created_at, name"
_RUN_ATTEMPTS = "SELECT * FROM run_attempts WHERE run_id = $1 ORDER BY attempt"
_RUN_USAGE = "SELECT * FROM usage_records WHERE run_id = $1 ORDER BY created_at"
_RUN_EVENTS = "SELECT * FROM events WHERE run_id = $1 ORDER BY seq"

_RESOLVE_STEP = "SELECT tidebase_resolve_step($1, $2, $3, $4, $5)"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("jsonb", "json"):
        await conn.set_type_codec(
            typename, encoder=_json, decoder=json.loads, schema="pg_catalog", format="text"
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset hook: our statements leave no session state (no LISTEN, no session advisory
    locks, no SET), so the default reset query, an extra round trip per release, is skipped.
    asyncpg still rolls back any open transaction before calling this."""


def _detail(exc: asyncpg.PostgresError) -> dict[str, Any]:
    try:
        return json.loads(getattr(exc, "detail", None) or "{}")
    except ValueError:
        return {}


_MISMATCH_PREFIX = "input mismatch for step "  # the TB422 message of migrations/002


def _step_in_message(exc: asyncpg.PostgresError, prefix: str) -> str | None:
    """The step a function's error message names (a batch write does not know which failed)."""
    message = getattr(exc, "message", None) or ""
    if not message.startswith(prefix):
        return None
    return message[len(prefix) :] or None


def _checkpoint_args(
    key: StepKey, output: Any, span: SpanRef | None, lease_ms: int
) -> tuple[Any, ...]:
    """The arguments of `_COMPLETE_STEP` (one checkpoint, alone or in a batch)."""
    return (
        key.run_id,
        key.owner,
        key.name,
        key.parent,
        key.input_hash,
        key.input,
        key.options,
        output,
        span.trace_id if span else None,
        span.span_id if span else None,
        lease_ms,
    )


def _translate(exc: asyncpg.PostgresError, run_id: str, step: str | None = None) -> Exception:
    code = getattr(exc, "sqlstate", None)
    if isinstance(exc, asyncpg.DataError):
        what = f"step {step!r} of run {run_id!r}" if step else f"run {run_id!r}"
        return SerializationError(what, "", "value", f"the database refused it: {exc}")
    if code == "TB404":
        return RunNotFound(run_id)
    if code == "TB410":
        return RunCancelled(run_id, _detail(exc).get("reason"))
    if code == "TB409":
        d = _detail(exc)
        return LeaseLost(run_id, f": now {d.get('status')}, lease held by {d.get('leaseOwner')!r}")
    if code == "TB422":
        d = _detail(exc)
        name = step or _step_in_message(exc, _MISMATCH_PREFIX) or "?"
        return InputMismatch(name, d.get("expected", "?"), d.get("actual", "?"))
    if code in ("TB423", "TB424"):
        return TidebaseError(exc.args[0] if exc.args else str(exc))
    if code == "TB400":
        return ValueError(str(exc))
    return exc


class PostgresStore:
    """Direct mode: talks to Postgres through an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool, url: str):
        self._pool = pool
        self.url_for_display = redact_url(url)

    @classmethod
    async def connect(
        cls, url: str, *, min_size: int = 2, max_size: int = 10, auto_migrate: bool = True
    ) -> PostgresStore:
        """Opens a pool (and applies pending migrations unless told not to)."""
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=min_size,
                max_size=max_size,
                init=_init_connection,
                reset=_keep_session,
                timeout=10,
            )
        except (*_CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            raise StoreUnavailable(
                f"cannot connect to Postgres at {redact_url(url)}: {exc}"
            ) from exc
        store = cls(pool, url)
        if auto_migrate:
            async with pool.acquire() as conn:
                await migrate.apply(conn)
        return store

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    @contextlib.asynccontextmanager
    async def _conn(self, run_id: str = "", step: str | None = None) -> AsyncIterator[Any]:
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except asyncpg.PostgresError as exc:
            raise self._error(exc, run_id, step) from exc
        except _CONNECTION_ERRORS as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(f"lost the connection to Postgres at {self.url_for_display}: {exc}")

    def _error(self, exc: asyncpg.PostgresError, run_id: str, step: str | None) -> Exception:
        translated = _translate(exc, run_id, step)
        if translated is exc and isinstance(exc, _CONNECTION_ERRORS):
            return self._unavailable(exc)
        return translated

    async def _fetchval(
        self, sql: str, *args: Any, run_id: str, step: str | None = None, idempotent: bool
    ) -> Any:
        """One statement on a pooled connection.

        An idempotent statement (fenced and ON CONFLICT-guarded, or read-only) is tried once
        more on a fresh connection when its connection turns out dead, so a database restart
        does not fail every worker's next step; anything else surfaces as StoreUnavailable.
        """
        return await self._with_connection(
            lambda conn: conn.fetchval(sql, *args), run_id=run_id, step=step, idempotent=idempotent
        )

    async def _with_connection(
        self,
        operation: Callable[[asyncpg.Connection], Awaitable[Any]],
        *,
        run_id: str,
        step: str | None,
        idempotent: bool,
    ) -> Any:
        """`operation` on a pooled connection, tried once more as `_fetchval` says."""
        for try_number in (1, 2):
            try:
                async with self._pool.acquire() as conn:
                    return await operation(conn)
            except asyncpg.PostgresError as exc:
                error = self._error(exc, run_id, step)
                if isinstance(error, StoreUnavailable) and idempotent and try_number == 1:
                    await self._pool.expire_connections()  # its siblings are likely dead too
                    continue
                raise error from exc
            except _CONNECTION_ERRORS as exc:
                if idempotent and try_number == 1:
                    await self._pool.expire_connections()
                    continue
                raise self._unavailable(exc) from exc
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self._pool.close()

    # -- runs ------------------------------------------------------------------------------

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
    ) -> BeginResult:
        data = await self._fetchval(
            _BEGIN_RUN,
            run_id,
            workflow,
            input,
            owner,
            lease_ms,
            create,
            span.trace_id if span else None,
            span.span_id if span else None,
            run_id=run_id,
            idempotent=True,  # same owner beginning again keeps its attempt,
        )
        if recovery_webhook is not None and data["outcome"] == "begun":
            await self.set_recovery_webhook(run_id, recovery_webhook)
        previous = data.get("previous")
        return BeginResult(
            outcome=data["outcome"],
            run=data["run"],
            steps=[StepRecord.from_json(s) for s in data.get("steps") or []],
            previous=SpanRef(previous["traceId"], previous["spanId"]) if previous else None,
        )

    async def heartbeat(self, run_id: str, owner: str, lease_ms: int) -> None:
        async with self._conn(run_id) as conn:
            if await conn.fetchval(_HEARTBEAT, run_id, owner, lease_ms):
                return
            row = await conn.fetchrow(_RUN_STATUS, run_id)
        if row is None:
            raise RunNotFound(run_id)
        if row["status"] == "cancelled":
            raise RunCancelled(run_id, row["cancel_reason"])
        raise LeaseLost(run_id, f": now {row['status']}, lease held by {row['lease_owner']!r}")

    async def _finish_run(
        self,
        run_id: str,
        owner: str,
        status: str,
        result: Any,
        error: Any,
        failure_class: str | None,
    ) -> dict[str, Any]:
        """Completes or fails the run under the lease: `{outcome, run, requeued}` (wire shape).
        A failed queue run with attempts left is requeued with backoff instead (migrations/004:
        the same rule as the server)."""
        async with self._conn(run_id) as conn:
            finished = await conn.fetchval(
                _FINISH_RUN, run_id, owner, status, result, error, failure_class
            )
            if finished is not None:
                return finished
            row = await conn.fetchrow(_RUN_STATUS, run_id)
        if row is None:
            raise RunNotFound(run_id)
        if row["status"] == "cancelled":
            raise RunCancelled(run_id, row["cancel_reason"])
        raise LeaseLost(run_id, f": now {row['status']}, lease held by {row['lease_owner']!r}")

    async def release_run(self, run_id: str, owner: str) -> None:
        """Gives up the lease of an interrupted attempt so the next invocation resumes at once."""
        await self._fetchval(_RELEASE_RUN, run_id, owner, run_id=run_id, idempotent=True)

    async def complete_run(self, run_id: str, owner: str, result: Any) -> None:
        await self._finish_run(run_id, owner, "completed", result, None, None)

    async def fail_run(
        self, run_id: str, owner: str, error: dict[str, Any], failure_class: str | None
    ) -> bool:
        """Records the failure; True when the run was requeued (a queue run with attempts left)."""
        finished = await self._finish_run(run_id, owner, "failed", None, error, failure_class)
        return bool(finished.get("requeued"))

    async def set_recovery_webhook(self, run_id: str, url: str) -> None:
        """Sets the URL the server calls to resume the run after a failure or a lost worker."""
        await self._fetchval(_SET_RECOVERY_WEBHOOK, run_id, url, run_id=run_id, idempotent=True)

    async def cancel_run(
        self, run_id: str, reason: str | None, actor: str | None
    ) -> dict[str, Any]:
        """Cancels the run (one-way): `{outcome: cancelled | already | completed, run}`."""
        return await self._fetchval(
            _CANCEL_RUN, run_id, reason, actor, run_id=run_id, idempotent=True
        )

    # -- queues ----------------------------------------------------------------------------

    async def enqueue(self, queue: str, request: EnqueueRequest) -> dict[str, Any]:
        """Enqueues a run (or finds the one holding the dedupe key): `{run, deduplicated}`."""
        span = request.span
        return await self._fetchval(
            _ENQUEUE,
            queue,
            request.workflow,
            request.input,
            request.metadata,
            request.recovery_webhook,
            request.channels,
            request.dedupe_key,
            request.run_at,
            request.delay_ms,
            request.max_attempts,
            request.priority,
            request.deadline_ms,
            span.trace_id if span else None,
            span.span_id if span else None,
            idempotent=request.dedupe_key is not None,
            run_id="",
        )

    async def claim(
        self, queues: list[str], owner: str, limit: int, lease_ms: int
    ) -> list[dict[str, Any]]:
        """Claims up to `limit` ready runs (wire shape), running under `owner`'s lease."""
        data = await self._fetchval(
            _CLAIM, queues, owner, limit, lease_ms, run_id="", idempotent=False
        )
        return data["runs"]

    async def configure_queue(
        self,
        queue: str,
        *,
        concurrency: int | None,
        rate_per_minute: int | None,
        invoke_url: str | None = None,
    ) -> dict[str, Any]:
        """Replaces the queue's caps (None: no cap); the stored config."""
        data = await self._fetchval(
            _SET_QUEUE_CONFIG,
            queue,
            concurrency,
            rate_per_minute,
            invoke_url,
            run_id="",
            idempotent=True,
        )
        return data["config"]

    async def list_queues(self) -> list[dict[str, Any]]:
        """Every queue with runs or a config: counts by status, ready count, config."""
        return (await self._fetchval(_QUEUES, run_id="", idempotent=True))["queues"]

    # -- steps -----------------------------------------------------------------------------

    async def start_step(self, key: StepKey, lease_ms: int) -> StepWrite:
        data = await self._fetchval(
            _START_STEP,
            key.run_id,
            key.owner,
            key.name,
            key.parent,
            key.input_hash,
            key.input,
            key.options,
            lease_ms,
            run_id=key.run_id,
            step=key.name,
            idempotent=True,
        )
        return StepWrite(data["action"], StepRecord.from_json(data["step"]))

    async def complete_step(
        self, key: StepKey, output: Any, span: SpanRef | None, lease_ms: int
    ) -> StepWrite:
        data = await self._fetchval(
            _COMPLETE_STEP,
            *_checkpoint_args(key, output, span, lease_ms),
            run_id=key.run_id,
            step=key.name,
            idempotent=True,
        )
        return StepWrite(data["action"], StepRecord.from_json(data["step"]))

    async def complete_steps(self, checkpoints: Sequence[Checkpoint], lease_ms: int) -> None:
        if not checkpoints:
            return
        rows = [_checkpoint_args(c.key, c.output, c.span, lease_ms) for c in checkpoints]
        # executemany: one round trip for the whole batch, atomic (asyncpg wraps it in a
        # transaction), so a batch is committed whole or not at all, with one commit.
        await self._with_connection(
            lambda conn: conn.executemany(_COMPLETE_STEP, rows),
            run_id=checkpoints[0].key.run_id,
            step=checkpoints[0].key.name if len(checkpoints) == 1 else None,
            idempotent=True,
        )

    async def fail_step(
        self,
        key: StepKey,
        error: dict[str, Any],
        status: str,
        resume_decision: str,
        span: SpanRef | None,
    ) -> StepWrite:
        data = await self._fetchval(
            _FAIL_STEP,
            key.run_id,
            key.owner,
            key.name,
            key.parent,
            key.input_hash,
            key.input,
            key.options,
            error,
            status,
            resume_decision,
            span.trace_id if span else None,
            span.span_id if span else None,
            run_id=key.run_id,
            step=key.name,
            idempotent=True,
        )
        return StepWrite(data["action"], StepRecord.from_json(data["step"]))

    # -- usage and state -------------------------------------------------------------------

    async def record_usage(self, run_id: str, owner: str, record: UsageRecord) -> bool:
        data = await self._fetchval(
            _RECORD_USAGE,
            run_id,
            owner,
            record.key,
            record.step_name,
            record.kind,
            record.provider,
            record.model,
            record.label,
            record.quantity,
            record.unit,
            record.input_tokens,
            record.output_tokens,
            record.total_tokens,
            record.cost_usd,
            record.metadata,
            run_id=run_id,
            idempotent=True,
        )
        return bool(data["inserted"])

    async def write_state(
        self, run_id: str, owner: str | None, value: Any, *, patch: bool, step: str | None
    ) -> dict[str, Any]:
        async with self._conn(run_id) as conn:
            return await conn.fetchval(
                _WRITE_STATE, run_id, owner, value, patch, None, None, None, None, None, None, step
            )

    async def read_state(self, run_id: str) -> dict[str, Any] | None:
        async with self._conn(run_id) as conn:
            row = await conn.fetchrow(_READ_STATE, run_id)
        return dict(row) if row else None

    # -- inspection and operator actions (CLI) --------------------------------------------

    async def list_runs(
        self, *, status: str | None = None, workflow: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        async with self._conn() as conn:
            rows = await conn.fetch(_LIST_RUNS, status, workflow, limit)
        return [dict(r) for r in rows]

    async def run_detail(self, run_id: str) -> dict[str, Any]:
        async with self._conn(run_id) as conn:
            run = await conn.fetchrow(_RUN_ROW, run_id)
            if run is None:
                raise RunNotFound(run_id)
            steps = await conn.fetch(_RUN_STEPS, run_id)
            attempts = await conn.fetch(_RUN_ATTEMPTS, run_id)
            usage = await conn.fetch(_RUN_USAGE, run_id)
            events = await conn.fetch(_RUN_EVENTS, run_id)
            state = await conn.fetchrow(_READ_STATE, run_id)
        return {
            "run": dict(run),
            "steps": [dict(s) for s in steps],
            "attempts": [dict(a) for a in attempts],
            "usage": [dict(u) for u in usage],
            "events": [dict(e) for e in events],
            "state": dict(state) if state else None,
        }

    async def resolve_step(
        self, run_id: str, step: str, *, retry: bool = False, output: Any = None
    ) -> dict[str, Any]:
        """Operator action for a parked step: allow another execution, or record its output."""
        if retry:
            status, decision, value = "failed", "safe_replay", None
        else:
            status, decision = "completed", None
            value = codec.encode(output, what=f"resolved output of step {step!r}")
        return await self._fetchval(
            _RESOLVE_STEP, run_id, step, status, value, decision, run_id=run_id, idempotent=False
        )
