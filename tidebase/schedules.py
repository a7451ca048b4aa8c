"""Cron expressions of schedules (migrations/005): validation and next fire times, in UTC.

Only 5-field expressions (minute hour day-of-month month day-of-week) are accepted: croniter
also reads a 6th (seconds) field and `@daily`-style aliases, which the wire API does not
promise. An expression that never fires (`0 0 31 2 *`) is refused too.
"""

from __future__ import annotations

import datetime as _dt

from croniter import CroniterBadDateError, croniter

MAX_CRON_CHARS = 255


class BadCron(ValueError):
    """Not a 5-field cron expression that ever fires."""


def check_cron(expr: str) -> str:
    """The expression, normalised to single spaces; `BadCron` saying why it is refused."""
    fields = expr.split()
    if len(fields) != 5:
        raise BadCron(f"must be a 5-field cron expression, got {len(fields)} field(s)")
    normalised = " ".join(fields)
    next_after(normalised, _dt.datetime.now(_dt.UTC))  # refuses expressions that never fire
    return normalised


def next_after(expr: str, after: _dt.datetime) -> _dt.datetime:
    """The first fire time strictly after `after` (UTC, aware); `BadCron` if there is none."""
    if after.tzinfo is None:
        after = after.replace(tzinfo=_dt.UTC)
    try:
        value = croniter(expr, after.astimezone(_dt.UTC)).get_next(_dt.datetime)
    except CroniterBadDateError:
        raise BadCron("never fires (no matching date)") from None
    except (ValueError, KeyError, TypeError) as exc:  # croniter's errors are ValueErrors
        raise BadCron(str(exc) or "is not a valid cron expression") from None
    return value.astimezone(_dt.UTC)
