"""Server-side store of the HTTP API (`tidebase serve`): one SQL function call per request.

`WireStore` extends the direct-mode `PostgresStore` with the operations of the Tidebase wire API
(migrations/003) and with variants of the checkpoint functions (migrations/002) that return the
stored JSON as it is, so the server relays it without rebuilding it. Every method is a single
statement, so a request either happens completely or not at all.

Errors: the checkpoint SQLSTATEs become the SDK's exceptions (`RunNotFound`, `LeaseLost`,
`RunCancelled`, `InputMismatch`); a request the database refuses as invalid (TB400, a data
exception, a value too large for an index) becomes `RequestRejected`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
from typing import Any

import asyncpg

from tidebase.errors import StoreUnavailable, TidebaseError
from tidebase.store.postgres import (
    _CANCEL_RUN,
    _COMPLETE_STEP,
    _CONNECTION_ERRORS,
    _FAIL_STEP,
    _RELEASE_RUN,
    _RESOLVE_STEP,
    _START_STEP,
    PostgresStore,
    _translate,
)


class RequestRejected(TidebaseError, ValueError):
    """The database refused a request as invalid; nothing was written."""


class BadCursor(TidebaseError, ValueError):
    """A run-list paging cursor that this server did not hand out."""


class NotResolvable(TidebaseError):
    """An operator resolve that cannot apply: `reason` is `run_leased` (a live worker holds the
    run) or `not_resolvable` (no parked, failed or interrupted step of that name)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


# SQLSTATE classes that mean "this input cannot be stored": data exceptions (22), integrity
# violations (23) and program limits such as an index row that is too large (54).
_REJECT_CLASSES = ("22", "23", "54")
_NOT_RESOLVABLE = {"TB423": "run_leased", "TB424": "not_resolvable"}

_CREATE_RUN = "SELECT tidebase_wire_create_run($1, $2, $3, $4, $5)"
_BEGIN_RUN = "SELECT tidebase_wire_begin_run($1, $2, $3, $4, $5, $6, $7, $8)"
_HEARTBEAT = "SELECT tidebase_wire_heartbeat($1, $2, $3)"
_FINISH_RUN = "SELECT tidebase_wire_finish_run($1, $2, $3, $4, $5, $6)"
_RUN_DETAIL = "SELECT tidebase_wire_run_detail($1)"
_RUN_EXISTS = "SELECT EXISTS (SELECT 1 FROM runs WHERE id = $1)"
_LIST_RUNS = """
SELECT COALESCE(jsonb_agg(tidebase_wire_run(r) || jsonb_build_object(
           'stepsDone', (SELECT count(*) FROM steps s
                          WHERE s.run_id = r.id AND s.status = 'completed'),
           'stepsTotal', (SELECT count(*) FROM steps s WHERE s.run_id = r.id),
           'tokens', (SELECT COALESCE(sum(total_tokens), 0) FROM usage_records u
                       WHERE u.run_id = r.id),
           'costUsd', (SELECT COALESCE(sum(cost_usd), 0)::double precision FROM usage_records u
                        WHERE u.run_id = r.id))
         ORDER BY r.created_at DESC, r.id DESC), '[]'::jsonb)
  FROM (SELECT * FROM runs
         WHERE ($1::text IS NULL OR status = $1
                OR ($1 = 'manual_review' AND failure_class = 'manual_review'))
           AND ($2::text IS NULL OR workflow_name = $2)
           AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::text))
         ORDER BY created_at DESC, id DESC
         LIMIT $5) r"""

_START_STEP_TEXT = _START_STEP + "::text"
_COMPLETE_STEP_TEXT = _COMPLETE_STEP + "::text"
_FAIL_STEP_TEXT = _FAIL_STEP + "::text"

_BEGIN_STEP = "SELECT tidebase_wire_begin_step($1, $2, $3, $4, $5, $6, $7)"
_COMPLETE_LEASED_STEP = "SELECT tidebase_wire_complete_step($1, $2, $3, $4)"
_FAIL_LEASED_STEP = "SELECT tidebase_wire_fail_step($1, $2, $3, $4, $5, $6)"

_WRITE_STATE = "SELECT tidebase_wire_write_state($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
_READ_STATE = """
SELECT EXISTS (SELECT 1 FROM runs WHERE id = $1),
       (SELECT tidebase_wire_state(s) FROM run_state s WHERE s.run_id = $1)"""
_SAVE_STATE = "SELECT tidebase_wire_save_state($1, $2, $3, $4, $5, $6, $7)"
_STATE_VERSIONS = """
SELECT EXISTS (SELECT 1 FROM runs WHERE id = $1),
       (SELECT COALESCE(jsonb_agg(tidebase_wire_state_version(v) ORDER BY v.stream, v.version),
                        '[]'::jsonb)
          FROM state_versions v
         WHERE v.run_id = $1 AND ($2::text IS NULL OR v.stream = $2)
           AND (NOT $3 OR v.label IS NOT NULL))"""
_SNAPSHOT = "SELECT tidebase_wire_snapshot($1, $2, $3, $4, $5, $6, $7, $8)"
_SNAPSHOTS = """
SELECT EXISTS (SELECT 1 FROM runs WHERE id = $1),
       (SELECT COALESCE(jsonb_agg(tidebase_wire_state_version(v)
                                  ORDER BY v.created_at DESC, v.id DESC), '[]'::jsonb)
          FROM state_versions v WHERE v.run_id = $1 AND v.label IS NOT NULL)"""
_RECORD_USAGE = (
    "SELECT tidebase_wire_record_usage($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,"
    " $14, $15, $16)"
)

_BEGIN_GATE = "SELECT tidebase_wire_begin_gate($1, $2, $3, $4, $5, $6)"
_GET_GATE = "SELECT tidebase_wire_get_gate($1, $2)"
_RESOLVE_GATE = "SELECT tidebase_wire_resolve_gate($1, $2, $3, $4, $5, $6)"
_CREATE_CHILD = "SELECT tidebase_wire_create_child($1, $2, $3, $4, $5, $6, $7, $8, $9)"

_PUT_SCHEDULE = "SELECT tidebase_put_schedule($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
_GET_SCHEDULE = "SELECT tidebase_wire_schedule(s) FROM schedules s WHERE s.name = $1"
_LIST_SCHEDULES = """
SELECT COALESCE(jsonb_agg(tidebase_wire_schedule(s) ORDER BY s.name), '[]'::jsonb)
  FROM schedules s"""
_DELETE_SCHEDULE = """
WITH d AS (DELETE FROM schedules WHERE name = $1 RETURNING 1) SELECT EXISTS (SELECT 1 FROM d)"""

_EVENTS_AFTER = """
SELECT COALESCE(jsonb_agg(tidebase_wire_event(e) ORDER BY e.seq), '[]'::jsonb)
  FROM (SELECT * FROM events WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3) e"""


def encode_cursor(run: dict[str, Any]) -> str:
    """An opaque paging cursor: the position (createdAt, id) of the last run of a page."""
    raw = f"{run['createdAt']}|{run['id']}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[_dt.datetime, str]:
    """The (createdAt, id) position a cursor stands for; `BadCursor` if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, sep, run_id = raw.partition("|")
        if not sep or not run_id:
            raise ValueError("no separator")
        created = _dt.datetime.fromisoformat(stamp)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadCursor("cursor: not a cursor returned by GET /runs") from None
    if created.tzinfo is None:
        raise BadCursor("cursor: not a cursor returned by GET /runs")
    return created, run_id


class WireStore(PostgresStore):
    """The HTTP API's operations over the same Postgres schema the SDK uses in direct mode."""

    async def _call(
        self, sql: str, *args: Any, run_id: str = "", step: str | None = None, row: bool = False
    ) -> Any:
        """Runs one statement: its single value (or its first row when `row`)."""
        try:
            async with self._pool.acquire() as conn:
                if row:
                    return await conn.fetchrow(sql, *args)
                return await conn.fetchval(sql, *args)
        except (asyncpg.PostgresError, *_CONNECTION_ERRORS) as exc:
            failure = self._failure(exc, run_id, step)
            if failure is exc:
                raise
            raise failure from (exc if isinstance(failure, StoreUnavailable) else None)

    async def _call_many(self, sql: str, rows: list[tuple[Any, ...]], *, run_id: str) -> None:
        """Runs one statement per row in one round trip and one transaction (all or nothing)."""
        try:
            async with self._pool.acquire() as conn:
                await conn.executemany(sql, rows)
        except (asyncpg.PostgresError, *_CONNECTION_ERRORS) as exc:
            failure = self._failure(exc, run_id, None)
            if failure is exc:
                raise
            raise failure from (exc if isinstance(failure, StoreUnavailable) else None)

    def _failure(self, exc: BaseException, run_id: str, step: str | None) -> BaseException:
        """What a failed statement raises: a request error (4xx), a tidebase error, or
        StoreUnavailable for a lost connection; anything else unchanged (a 500)."""
        if isinstance(exc, asyncpg.PostgresError):
            code = getattr(exc, "sqlstate", None) or ""
            if code == "TB400" or code[:2] in _REJECT_CLASSES:
                return RequestRejected(getattr(exc, "message", None) or str(exc))
            if code in _NOT_RESOLVABLE:
                return NotResolvable(str(exc), _NOT_RESOLVABLE[code])
            translated = _translate(exc, run_id, step)
            if translated is not exc:
                return translated
        if isinstance(exc, _CONNECTION_ERRORS):
            return StoreUnavailable(
                f"lost the connection to Postgres at {self.url_for_display}: {exc}"
            )
        return exc

    async def ping(self) -> None:
        """Raises `StoreUnavailable` unless the database answers."""
        await self._call("SELECT 1")

    # -- runs ------------------------------------------------------------------------------

    async def create_run(
        self,
        workflow: str,
        input: Any,
        metadata: dict[str, Any] | None,
        recovery_webhook: str | None,
        channels: list[dict[str, Any]] | None,
    ) -> dict[str, Any]:
        """Inserts a `pending` run with its channels and a `run.created` event: `{run}`."""
        return await self._call(_CREATE_RUN, workflow, input, metadata, recovery_webhook, channels)

    async def runs_page(
        self,
        *,
        status: str | None,
        workflow: str | None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Runs newest first, with step/usage totals; the cursor of the next page (or None)."""
        after_ts, after_id = decode_cursor(cursor) if cursor else (None, None)
        runs = await self._call(_LIST_RUNS, status, workflow, after_ts, after_id, limit)
        next_cursor = encode_cursor(runs[-1]) if len(runs) == limit else None
        return runs, next_cursor

    async def detail(self, run_id: str) -> dict[str, Any] | None:
        """Everything stored about a run in the wire shape, or None for an unknown run."""
        return await self._call(_RUN_DETAIL, run_id, run_id=run_id)

    async def run_exists(self, run_id: str) -> bool:
        return bool(await self._call(_RUN_EXISTS, run_id, run_id=run_id))

    async def begin(
        self,
        run_id: str,
        workflow: str | None,
        input: Any,
        owner: str,
        lease_ms: int,
        *,
        create: bool,
        trace_id: str | None,
        span_id: str | None,
    ) -> dict[str, Any]:
        """Takes the run lease: `{outcome, run, leaseOwner, steps, previous}`.

        outcome: begun | completed | leased | cancelled | workflow_mismatch. `workflow` None
        skips the workflow check (the reference's plain begin).
        """
        return await self._call(
            _BEGIN_RUN,
            run_id,
            workflow,
            input,
            owner,
            lease_ms,
            create,
            trace_id,
            span_id,
            run_id=run_id,
        )

    async def extend_lease(self, run_id: str, owner: str, lease_ms: int) -> dict[str, Any]:
        """Heartbeat: `{outcome: extended | lease_lost | cancelled, run}`."""
        return await self._call(_HEARTBEAT, run_id, owner, lease_ms, run_id=run_id)

    async def finish(
        self,
        run_id: str,
        owner: str | None,
        status: str,
        *,
        result: Any = None,
        error: Any = None,
        failure_class: str | None = None,
    ) -> dict[str, Any]:
        """Completes or fails a run: `{outcome, run, requeued}`.

        outcome: completed | failed | requeued | already (repeat, or completed run left as is)
        | cancelled (left as is) | lease_lost (only when `owner` is given).
        """
        return await self._call(
            _FINISH_RUN, run_id, owner, status, result, error, failure_class, run_id=run_id
        )

    async def release(self, run_id: str, owner: str) -> bool:
        """Gives up an interrupted attempt's lease (the run stays as it is): whether it was held."""
        return await self._call(_RELEASE_RUN, run_id, owner, run_id=run_id) is not None

    async def cancel(self, run_id: str, reason: str | None, actor: str | None) -> dict[str, Any]:
        """`{outcome: cancelled | already | completed, run}`."""
        return await self._call(_CANCEL_RUN, run_id, reason, actor, run_id=run_id)

    # -- steps: the reference protocol (per-step leases) ----------------------------------

    async def begin_step(
        self,
        run_id: str,
        name: str,
        input_hash: str,
        input: Any,
        options: dict[str, Any] | None,
        owner: str,
        lease_ms: int,
    ) -> dict[str, Any]:
        """`{action: cancelled | input_mismatch | return | locked | execute, ...}`."""
        return await self._call(
            _BEGIN_STEP, run_id, name, input_hash, input, options, owner, lease_ms, run_id=run_id
        )

    async def complete_leased_step(
        self, run_id: str, step_id: str, owner: str, output: Any
    ) -> dict[str, Any]:
        """`{outcome: completed, step}` or `{outcome: lease_lost}`."""
        return await self._call(
            _COMPLETE_LEASED_STEP, run_id, step_id, owner, output, run_id=run_id
        )

    async def fail_leased_step(
        self,
        run_id: str,
        step_id: str,
        owner: str,
        error: Any,
        retryable: bool,
        decision: str | None,
    ) -> dict[str, Any]:
        """`{outcome: failed, step}` or `{outcome: lease_lost}`."""
        return await self._call(
            _FAIL_LEASED_STEP, run_id, step_id, owner, error, retryable, decision, run_id=run_id
        )

    # -- steps: the SDK fast path (run-lease fenced, migrations/002) ----------------------
    # These return the function's JSON as text: the server relays it without re-encoding.

    async def start_step_text(
        self,
        run_id: str,
        owner: str,
        name: str,
        parent: str | None,
        input_hash: str,
        input: Any,
        options: dict[str, Any] | None,
        lease_ms: int,
    ) -> str:
        """Records a side-effecting step's start: `{action: execute | return, step}`."""
        return await self._call(
            _START_STEP_TEXT,
            run_id,
            owner,
            name,
            parent,
            input_hash,
            input,
            options,
            lease_ms,
            run_id=run_id,
            step=name,
        )

    async def checkpoints(
        self, run_id: str, owner: str, lease_ms: int, items: list[dict[str, Any]]
    ) -> None:
        """Writes several checkpoints of one run in order, in one transaction (pipelined
        checkpoints): each item has the keyword arguments of `checkpoint_text` but the run,
        owner and lease."""
        rows = [
            (
                run_id,
                owner,
                i["name"],
                i["parent"],
                i["input_hash"],
                i["input"],
                i["options"],
                i["output"],
                i["trace_id"],
                i["span_id"],
                lease_ms,
            )
            for i in items
        ]
        await self._call_many(_COMPLETE_STEP, rows, run_id=run_id)

    async def checkpoint_text(
        self,
        run_id: str,
        owner: str,
        name: str,
        parent: str | None,
        input_hash: str,
        input: Any,
        options: dict[str, Any] | None,
        output: Any,
        trace_id: str | None,
        span_id: str | None,
        lease_ms: int,
    ) -> str:
        """Writes a step's checkpoint: `{action: completed | return, step}`."""
        return await self._call(
            _COMPLETE_STEP_TEXT,
            run_id,
            owner,
            name,
            parent,
            input_hash,
            input,
            options,
            output,
            trace_id,
            span_id,
            lease_ms,
            run_id=run_id,
            step=name,
        )

    async def step_failure_text(
        self,
        run_id: str,
        owner: str,
        name: str,
        parent: str | None,
        input_hash: str,
        input: Any,
        options: dict[str, Any] | None,
        error: Any,
        status: str,
        decision: str,
        trace_id: str | None,
        span_id: str | None,
    ) -> str:
        """Records a step's failure: `{action: failed | return, step}`."""
        return await self._call(
            _FAIL_STEP_TEXT,
            run_id,
            owner,
            name,
            parent,
            input_hash,
            input,
            options,
            error,
            status,
            decision,
            trace_id,
            span_id,
            run_id=run_id,
            step=name,
        )

    async def resolve_step_json(
        self, run_id: str, name: str, *, retry: bool, output: Any
    ) -> dict[str, Any]:
        """Operator resolve of a parked step (`output` is stored verbatim: it arrives encoded).

        `{id, status}`; NotResolvable when a live worker holds the run or no such step waits.
        """
        if retry:
            status, decision, value = "failed", "safe_replay", None
        else:
            status, decision, value = "completed", None, output
        return await self._call(
            _RESOLVE_STEP, run_id, name, status, value, decision, run_id=run_id, step=name
        )

    # -- state, snapshots, usage ----------------------------------------------------------

    async def write_state_json(
        self,
        run_id: str,
        owner: str | None,
        value: Any,
        *,
        patch: bool,
        stream: str | None,
        label: str | None,
        reason: str | None,
        importance: str | None,
        metadata: dict[str, Any] | None,
        created_by: str | None,
        step: str | None,
    ) -> dict[str, Any]:
        """PUT/PATCH state (fenced when `owner` is given): `{state}`."""
        return await self._call(
            _WRITE_STATE,
            run_id,
            owner,
            value,
            patch,
            stream,
            label,
            reason,
            importance,
            metadata,
            created_by,
            step,
            run_id=run_id,
        )

    async def state_json(self, run_id: str) -> tuple[bool, dict[str, Any] | None]:
        """(run exists, its current state or None)."""
        found, state = await self._call(_READ_STATE, run_id, run_id=run_id, row=True)
        return bool(found), state

    async def save_state(
        self,
        run_id: str,
        *,
        stream: str,
        label: str,
        reason: str | None,
        importance: str,
        metadata: dict[str, Any] | None,
        created_by: str | None,
    ) -> dict[str, Any] | None:
        """A labelled copy of the stream's current value, or None if the stream has none."""
        return await self._call(
            _SAVE_STATE,
            run_id,
            stream,
            label,
            reason,
            importance,
            metadata,
            created_by,
            run_id=run_id,
        )

    async def state_versions(
        self, run_id: str, *, stream: str | None, labeled: bool
    ) -> list[dict[str, Any]] | None:
        """Versions by stream then version; None for an unknown run."""
        found, versions = await self._call(
            _STATE_VERSIONS, run_id, stream, labeled, run_id=run_id, row=True
        )
        return versions if found else None

    async def snapshot(
        self,
        run_id: str,
        *,
        label: str,
        state: Any,
        target_type: str,
        target_id: str,
        reason: str | None,
        metadata: dict[str, Any] | None,
        created_by: str | None,
    ) -> dict[str, Any]:
        """A milestone version in stream `<type>:<id>`."""
        return await self._call(
            _SNAPSHOT,
            run_id,
            label,
            state,
            target_type,
            target_id,
            reason,
            metadata,
            created_by,
            run_id=run_id,
        )

    async def snapshots(self, run_id: str) -> list[dict[str, Any]] | None:
        """Labelled versions newest first; None for an unknown run."""
        found, versions = await self._call(_SNAPSHOTS, run_id, run_id=run_id, row=True)
        return versions if found else None

    async def record_usage_json(
        self,
        run_id: str,
        *,
        owner: str | None,
        key: str | None,
        step_id: str | None,
        step_name: str | None,
        kind: str | None,
        provider: str | None,
        model: str | None,
        label: str | None,
        quantity: float | None,
        unit: str | None,
        input_tokens: int | None,
        output_tokens: int | None,
        total_tokens: int | None,
        cost_usd: float | None,
        metadata: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """`{usage, inserted}`; idempotent per `key`, fenced when `owner` is given."""
        return await self._call(
            _RECORD_USAGE,
            run_id,
            owner,
            key,
            step_id,
            step_name,
            kind,
            provider,
            model,
            label,
            quantity,
            unit,
            input_tokens,
            output_tokens,
            total_tokens,
            cost_usd,
            metadata,
            run_id=run_id,
        )

    # -- gates and children ----------------------------------------------------------------

    async def begin_gate(
        self,
        run_id: str,
        name: str,
        prompt: str,
        data: Any,
        channels: list[dict[str, Any]] | None,
        capability: Any,
    ) -> dict[str, Any]:
        """`{outcome: ok, action: wait | return, gate}` or `{outcome: cancelled, run}`."""
        return await self._call(
            _BEGIN_GATE, run_id, name, prompt, data, channels, capability, run_id=run_id
        )

    async def get_gate(self, run_id: str, gate_id: str) -> dict[str, Any] | None:
        """`{gate, runStatus}` or None."""
        return await self._call(_GET_GATE, run_id, gate_id, run_id=run_id)

    async def resolve_gate(
        self,
        run_id: str,
        gate_id: str,
        token: str,
        decision: str,
        actor: str | None,
        payload: Any,
    ) -> dict[str, Any]:
        """`{outcome: resolved, gate}` or `{outcome: conflict}` (exactly one resolve wins)."""
        return await self._call(
            _RESOLVE_GATE, run_id, gate_id, token, decision, actor, payload, run_id=run_id
        )

    async def create_child(
        self,
        parent_id: str,
        name: str,
        workflow: str,
        input: Any,
        metadata: dict[str, Any] | None,
        recovery_webhook: str | None,
        channels: list[dict[str, Any]] | None,
        edge_type: str | None,
        edge_metadata: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """`{run, edge, created}`; one child per (parent, name)."""
        return await self._call(
            _CREATE_CHILD,
            parent_id,
            name,
            workflow,
            input,
            metadata,
            recovery_webhook,
            channels,
            edge_type,
            edge_metadata,
            run_id=parent_id,
        )

    # -- events ----------------------------------------------------------------------------

    async def events_after(self, run_id: str, after: int, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` events of the run with seq > `after`, in order."""
        return await self._call(_EVENTS_AFTER, run_id, after, limit, run_id=run_id)

    # -- schedules (migrations/005) ---------------------------------------------------------

    async def put_schedule(
        self,
        name: str,
        *,
        cron: str,
        queue: str,
        workflow: str,
        input: Any,
        metadata: dict[str, Any] | None,
        max_attempts: int | None,
        priority: int | None,
        enabled: bool,
        next_run_at: _dt.datetime,
    ) -> dict[str, Any]:
        """Creates or replaces a schedule: `{schedule, created}`. `next_run_at` applies unless
        the schedule exists, stays enabled and keeps its cron (then its next run is kept)."""
        return await self._call(
            _PUT_SCHEDULE,
            name,
            cron,
            queue,
            workflow,
            input,
            metadata,
            max_attempts,
            priority,
            enabled,
            next_run_at,
        )

    async def get_schedule(self, name: str) -> dict[str, Any] | None:
        return await self._call(_GET_SCHEDULE, name)

    async def list_schedules(self) -> list[dict[str, Any]]:
        return await self._call(_LIST_SCHEDULES)

    async def delete_schedule(self, name: str) -> bool:
        """Deletes the schedule; whether it existed."""
        return await self._call(_DELETE_SCHEDULE, name)
