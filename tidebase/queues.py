"""Enqueueing runs: argument checks, times, and the enqueue telemetry around the store call.

`AsyncTidebase.enqueue` delegates here; `tidebase.worker` executes what is enqueued.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tidebase import codec
from tidebase.hooks import EnqueueInfo, global_observers, start_enqueue
from tidebase.store.base import EnqueueRequest

if TYPE_CHECKING:
    from tidebase.aio import AsyncTidebase

_MAX_DELAY_S = 366 * 24 * 3600
_MAX_PRIORITY = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Enqueued:
    """The result of `tide.enqueue`: the run (wire shape: camelCase keys) and whether an
    existing run with the same dedupe key was returned instead of a new one."""

    run_id: str
    deduplicated: bool
    run: dict[str, Any]


@dataclass(slots=True)
class AttemptOutcome:
    """Filled in by a run attempt: whether its failure put the run back on its queue."""

    requeued: bool = False


def check_webhook_url(url: Any) -> str:
    """A recovery webhook must be an absolute http(s) URL."""
    if not isinstance(url, str) or len(url) > 2048:
        raise ValueError(f"recovery_webhook must be an http(s) URL, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"recovery_webhook must be an http(s) URL, got {url!r}")
    return url


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, _dt.timedelta):
        value = value.total_seconds()
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not 0 <= value <= _MAX_DELAY_S
    ):
        raise ValueError(
            f"{name} must be 0..{_MAX_DELAY_S} seconds (or a timedelta), got {value!r}"
        )
    return float(value)


def _aware(name: str, value: Any) -> _dt.datetime:
    if not isinstance(value, _dt.datetime) or value.tzinfo is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value


def _deadline_ms(deadline: Any) -> int | None:
    if deadline is None:
        return None
    if isinstance(deadline, _dt.datetime):
        remaining = (_aware("deadline", deadline) - _dt.datetime.now(_dt.UTC)).total_seconds()
        return max(0, int(remaining * 1000))
    return int(_seconds("deadline", deadline) * 1000)


def _int(name: str, value: Any, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer {low}..{high}, got {value!r}")
    return value


async def enqueue_run(
    tide: AsyncTidebase,
    workflow: str,
    *,
    queue: str,
    input: Any,
    dedupe_key: str | None,
    delay: Any,
    run_at: Any,
    max_attempts: int,
    priority: int,
    deadline: Any,
    recovery_webhook: str | None,
    metadata: dict[str, Any] | None,
) -> Enqueued:
    """Validates the arguments and enqueues the run under an enqueue span (see
    `AsyncTidebase.enqueue` for the parameters)."""
    from tidebase.aio import _check_name

    _check_name("workflow name", workflow)
    _check_name("queue name", queue)
    if dedupe_key is not None:
        _check_name("dedupe key", dedupe_key)
    if recovery_webhook is not None:
        check_webhook_url(recovery_webhook)
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    if delay is not None and run_at is not None:
        raise ValueError("enqueue takes delay or run_at, not both")
    request = EnqueueRequest(
        workflow=workflow,
        input=codec.encode(input, what=f"input of a {workflow!r} run"),
        metadata=codec.encode(metadata, what="run metadata") if metadata else None,
        recovery_webhook=recovery_webhook,
        dedupe_key=dedupe_key,
        run_at=_aware("run_at", run_at) if run_at is not None else None,
        delay_ms=int(_seconds("delay", delay) * 1000) if delay is not None else None,
        max_attempts=_int("max_attempts", max_attempts, 1, 1000),
        priority=_int("priority", priority, -_MAX_PRIORITY, _MAX_PRIORITY),
        deadline_ms=_deadline_ms(deadline),
    )
    tracker = start_enqueue(
        [*global_observers(), *tide._observers],
        EnqueueInfo(
            queue=queue,
            workflow=workflow,
            dedupe_key=dedupe_key,
            priority=request.priority,
            max_attempts=request.max_attempts,
        ),
    )
    if tracker.span_ref is not None:
        request = replace(request, span=tracker.span_ref)
    try:
        store = await tide.store()
        data = await store.enqueue(queue, request)
    except BaseException as exc:
        tracker.finished(error=exc)
        raise
    run = data["run"]
    tracker.finished(run_id=run["id"], deduplicated=bool(data["deduplicated"]))
    return Enqueued(run_id=run["id"], deduplicated=bool(data["deduplicated"]), run=run)
