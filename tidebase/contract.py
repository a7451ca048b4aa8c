"""The resume contract: how step inputs are hashed and how a step's final failure is classified.

Both follow the Tidebase HTTP API reference exactly (see the README), so hashes computed here
equal those of Tidebase's other SDKs and a server can be shared with them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal

ResumeDecision = Literal["auto_retry", "safe_replay", "manual_review", "fail_hard"]
ReplayMode = Literal["auto", "manual", "never"]

REPLAY_MODES: frozenset[str] = frozenset({"auto", "manual", "never"})

# What `runs list --status` / `GET /runs?status=` filter on: a run's status, or manual_review
# (failed runs parked on a step).
RUN_STATUS_FILTERS: tuple[str, ...] = (
    "pending",
    "queued",
    "running",
    "completed",
    "failed",
    "cancelled",
    "manual_review",
)

# Step status written for each decision on a step's final failure.
STATUS_FOR_DECISION: Mapping[str, str] = {
    "auto_retry": "failed_retryable",
    "manual_review": "manual_review",
    "safe_replay": "failed",
    "fail_hard": "failed",
}


def canonical_json(value: Any) -> str:
    """Canonical JSON text: dict keys sorted, no whitespace, non-ASCII kept raw."""
    if isinstance(value, dict):
        items = []
        for key in sorted(value):
            items.append(
                json.dumps(str(key), ensure_ascii=False) + ":" + canonical_json(value[key])
            )
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(canonical_json(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def same_json(a: Any, b: Any) -> bool:
    """Whether two JSON values are equal as Postgres `jsonb` compares them.

    Numbers compare by value (``1 == 1.0``, ``-0.0 == 0``, ``1e16`` equals the integer
    Postgres hands back for it), booleans never equal numbers, objects compare by key. The
    store answers the same question in SQL for unfinished runs; this is its Python twin for
    the values it has already read back.
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return _as_numeric(a) == _as_numeric(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _as_numeric(number: int | float) -> Decimal:
    # A float reaches Postgres as its shortest repr (json.dumps), which `numeric` reads exactly.
    return Decimal(repr(number)) if isinstance(number, float) else Decimal(number)


def hash_input(value: Any) -> str:
    """Lowercase hex SHA-256 of the canonical JSON of a step input (`None` hashes `null`)."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def declares_external_write(side_effects: Sequence[Any] | None) -> bool:
    """True when the declared side effects include anything but reads."""
    effects = [e for e in (side_effects or []) if e]
    return bool(effects) and not all(e == "read" for e in effects)


def classify_resume_decision(options: Mapping[str, Any]) -> ResumeDecision:
    """What may happen to a step after its final failure (or a crash while it ran).

    replay=manual → manual_review; replay=never → fail_hard; replay=auto → safe_replay;
    external writes without an idempotency key → manual_review; otherwise safe_replay.
    """
    replay = options.get("replay")
    if replay == "manual":
        return "manual_review"
    if replay == "never":
        return "fail_hard"
    if replay == "auto":
        return "safe_replay"
    if declares_external_write(options.get("sideEffects")) and not options.get("idempotencyKey"):
        return "manual_review"
    return "safe_replay"


_MAX_MESSAGE = 4000


def _storable_text(text: str) -> str:
    """Text Postgres can hold: no NUL, no lone surrogates, capped in length."""
    text = text.replace("\x00", "\\0")
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def error_payload(error: BaseException) -> dict[str, str]:
    """How failures are stored: `{name, message}`, no stack (as Tidebase's Python SDK does)."""
    try:
        message = str(error)
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the failure
        message = f"<{type(error).__name__} with an unprintable message>"
    return {"name": type(error).__name__, "message": _storable_text(message)}
