"""Schedules (migrations/005): the CRUD routes, cron validation, and the reconciler enqueuing due
schedules exactly once across replicas, without catching up missed intervals."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import uuid

import asyncpg
import httpx
import pytest
from _queue_helpers import reconciler

# Fires once a year: the server's own reconciler leaves these alone unless a test makes them due.
YEARLY = "0 0 1 1 *"


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _body(queue: str, **extra) -> dict:
    return {"cron": YEARLY, "queue": queue, "workflowName": "sched-wf", **extra}


def _parse(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


async def _make_due(db: asyncpg.Connection, name: str, ago: str = "1 hour") -> dt.datetime:
    return await db.fetchval(
        "UPDATE schedules SET next_run_at = now() - $2::text::interval WHERE name = $1"
        " RETURNING next_run_at",
        name,
        ago,
    )


async def _runs_of(db: asyncpg.Connection, name: str) -> list[asyncpg.Record]:
    await db.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    return await db.fetch(
        "SELECT * FROM runs WHERE dedupe_key LIKE $1 ORDER BY created_at", f"schedule:{name}:%"
    )


async def test_put_get_list_delete(api: httpx.AsyncClient) -> None:
    name, queue = _name("crud"), _name("q")
    created = await api.put(
        f"/schedules/{name}",
        json=_body(queue, input={"n": 1}, metadata={"team": "a"}, maxAttempts=3, priority=5),
    )
    assert created.status_code == 200, created.text
    assert created.json()["created"] is True
    schedule = created.json()["schedule"]
    assert schedule["name"] == name and schedule["cron"] == YEARLY
    assert schedule["queue"] == queue and schedule["workflowName"] == "sched-wf"
    assert schedule["input"] == {"n": 1} and schedule["metadata"] == {"team": "a"}
    assert schedule["maxAttempts"] == 3 and schedule["priority"] == 5
    assert schedule["enabled"] is True and schedule["lastRunAt"] is None
    next_run = _parse(schedule["nextRunAt"])
    assert next_run > dt.datetime.now(dt.UTC)
    assert (next_run.month, next_run.day, next_run.hour, next_run.minute) == (1, 1, 0, 0)

    got = await api.get(f"/schedules/{name}")
    assert got.status_code == 200 and got.json()["schedule"] == schedule

    listed = await api.get("/schedules")
    assert listed.status_code == 200
    assert [s for s in listed.json()["schedules"] if s["name"] == name] == [schedule]

    # PUT replaces (optional fields absent become null), same cron keeps the next run
    replaced = await api.put(
        f"/schedules/{name}", json=_body(queue, workflowName="other-wf", enabled=False)
    )
    assert replaced.status_code == 200 and replaced.json()["created"] is False
    again = replaced.json()["schedule"]
    assert again["workflowName"] == "other-wf" and again["enabled"] is False
    assert again["input"] is None and again["maxAttempts"] is None
    assert again["createdAt"] == schedule["createdAt"]
    assert _parse(again["updatedAt"]) >= _parse(schedule["updatedAt"])

    rescheduled = await api.put(f"/schedules/{name}", json=_body(queue, cron="*/5 * * * *"))
    assert rescheduled.status_code == 200
    soon = _parse(rescheduled.json()["schedule"]["nextRunAt"])
    assert soon - dt.datetime.now(dt.UTC) <= dt.timedelta(minutes=5, seconds=5)

    deleted = await api.delete(f"/schedules/{name}")
    assert deleted.status_code == 200 and deleted.json() == {"deleted": True}
    deleted = await api.delete(f"/schedules/{name}")
    assert deleted.status_code == 200 and deleted.json() == {"deleted": False}
    missing = await api.get(f"/schedules/{name}")
    assert missing.status_code == 404 and missing.json() == {"error": "schedule not found"}


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * * * *"}, "cron"),  # 6 fields (seconds): not 5-field cron
        ({"cron": "@daily"}, "cron"),
        ({"cron": "nope"}, "cron"),
        ({"cron": "0 0 31 2 *"}, "cron"),  # never fires
        ({"cron": "H * * * *"}, "cron"),
        ({"cron": "*/0 * * * *"}, "cron"),
        ({"cron": ""}, "cron"),
        ({"cron": 5}, "cron"),
        ({"cron": None}, "cron"),
        ({"queue": None}, "queue"),
        ({"queue": ""}, "queue"),
        ({"workflowName": None}, "workflowName"),
        ({"maxAttempts": 0}, "maxAttempts"),
        ({"priority": "high"}, "priority"),
        ({"enabled": "yes"}, "enabled"),
        ({"metadata": [1]}, "metadata"),
    ],
)
async def test_bad_fields_are_400_naming_the_field(
    api: httpx.AsyncClient, patch: dict, field: str
) -> None:
    name = _name("bad")
    response = await api.put(f"/schedules/{name}", json={**_body(_name("q")), **patch})
    assert response.status_code == 400, response.text
    assert response.json()["issues"][0]["path"] == [field]
    assert (await api.get(f"/schedules/{name}")).status_code == 404


async def test_due_schedule_is_enqueued_exactly_once_across_reconcilers(
    api: httpx.AsyncClient, db: asyncpg.Connection, pg_url: str
) -> None:
    queue = _name("q")
    names = [_name("due") for _ in range(5)]
    for name in names:
        response = await api.put(
            f"/schedules/{name}", json=_body(queue, input={"name": name}, priority=7)
        )
        assert response.status_code == 200, response.text
    async with contextlib.AsyncExitStack() as stack:
        recs = [await stack.enter_async_context(reconciler(pg_url)) for _ in range(4)]
        dues = {name: await _make_due(db, name) for name in names}
        results = await asyncio.gather(*(r.enqueue_due_schedules() for r in recs))
        fired = [item["schedule"] for result in results for item in result]
        # (the server's own reconciler may have fired some of them first)
        assert len(fired) == len(set(fired)) and set(fired) <= set(names)
        # a later tick finds nothing due
        assert not [
            item for item in await recs[0].enqueue_due_schedules() if item["schedule"] in names
        ]

    now = await db.fetchval("SELECT now()")
    for name in names:
        runs = await _runs_of(db, name)
        assert len(runs) == 1, name
        run = runs[0]
        due_iso = dues[name].astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert run["dedupe_key"] == f"schedule:{name}:{due_iso}"
        assert run["queue"] == queue and run["status"] == "queued"
        assert run["workflow_name"] == "sched-wf" and run["priority"] == 7
        assert run["input"] == {"name": name}
        assert run["metadata"]["schedule"] == {"name": name, "dueAt": due_iso}
        row = await db.fetchrow("SELECT * FROM schedules WHERE name = $1", name)
        assert row["next_run_at"] > now  # advanced to the next fire time (next 1 January)
        assert row["next_run_at"].month == 1 and row["next_run_at"].day == 1
        assert row["last_run_at"] is not None


async def test_missed_intervals_are_not_caught_up(
    api: httpx.AsyncClient, db: asyncpg.Connection, pg_url: str
) -> None:
    name, queue = _name("every-minute"), _name("q")
    response = await api.put(f"/schedules/{name}", json=_body(queue, cron="* * * * *"))
    assert response.status_code == 200, response.text
    due = await _make_due(db, name, "3 hours")  # 180 missed fire times
    async with reconciler(pg_url) as rec:
        summary = await rec.tick()
    assert "scheduled" in summary
    row = await db.fetchrow("SELECT next_run_at, now() AS now FROM schedules WHERE name = $1", name)
    assert row["now"] < row["next_run_at"] <= row["now"] + dt.timedelta(seconds=60)
    assert row["next_run_at"].second == 0 and row["next_run_at"].microsecond == 0
    runs = await _runs_of(db, name)
    due_iso = due.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    fired_for_due = [r for r in runs if r["metadata"]["schedule"]["dueAt"] == due_iso]
    assert len(fired_for_due) == 1
    # one run for the missed stretch (a later one only if a minute boundary passed meanwhile)
    assert len(runs) <= 2
    await api.delete(f"/schedules/{name}")


async def test_disabled_schedule_is_not_enqueued(
    api: httpx.AsyncClient, db: asyncpg.Connection, pg_url: str
) -> None:
    name = _name("off")
    response = await api.put(f"/schedules/{name}", json=_body(_name("q"), enabled=False))
    assert response.status_code == 200
    await _make_due(db, name)
    async with reconciler(pg_url) as rec:
        await rec.tick()
    assert await _runs_of(db, name) == []
    # re-enabling computes a fresh next run (the stale due time is not fired)
    response = await api.put(f"/schedules/{name}", json=_body(_name("q")))
    assert _parse(response.json()["schedule"]["nextRunAt"]) > dt.datetime.now(dt.UTC)
