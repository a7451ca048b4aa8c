"""The bad-input matrix: malformed JSON and wrongly typed fields for the body of every route.

Never a 500, always a 4xx that names what was wrong, and a rejected request changes nothing
in the database (a fingerprint of every table is compared before and after)."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import httpx
import pytest

from .wire_client import begin_run, begin_step, create_run

FINGERPRINT = """
SELECT (SELECT count(*) FROM runs), (SELECT COALESCE(sum(event_seq), 0) FROM runs),
       (SELECT max(updated_at)::text FROM runs), (SELECT count(*) FROM run_attempts),
       (SELECT count(*) FROM steps), (SELECT max(updated_at)::text FROM steps),
       (SELECT count(*) FROM events), (SELECT count(*) FROM run_state),
       (SELECT max(updated_at)::text FROM run_state), (SELECT count(*) FROM state_versions),
       (SELECT count(*) FROM state_streams), (SELECT count(*) FROM usage_records),
       (SELECT count(*) FROM gates), (SELECT max(updated_at)::text FROM gates),
       (SELECT count(*) FROM run_edges), (SELECT count(*) FROM channels),
       (SELECT count(*) FROM channel_deliveries)"""

RAW_BODIES: list[bytes] = [
    b"{",
    b"[",
    b"nul",
    b'{"a":',
    b"\xff\xfe\x00",
    b'{"a": NaN}',
    b'{"a": -Infinity}',
    b'{"a": 1e999}',
    b"[" * 3000 + b"]" * 3000,
    b'{"a":' * 2000 + b"1" + b"}" * 2000,
    b'"just a string"',
    b"123",
    b"[]",
    b"null",
    b"true",
    b'{"a": ' + b"1" * 5000 + b"}",
    b'{"name": "a\\u0000b", "inputHash": "h"}',
    b'{"name": "\\ud800", "inputHash": "h"}',
    b'{"\\u0000": 1}',
    b'{"input": {"k": "\\udfff"}}',
    b'{"a": "\xc3\x28"}',
]

CHECKPOINTS = [
    1,
    "s",
    {},
    [],
    [1],
    [{}],
    [{"name": 5, "inputHash": "h"}],
    [{"name": "fz-a", "inputHash": "h"}, {"name": "", "inputHash": "h"}],  # all or nothing
    [{"name": "fz-b", "inputHash": "h", "options": 5}],
    [{"name": "fz-c", "inputHash": "h", "options": {"sideEffects": "x"}}],
    [{"name": "fz-d", "inputHash": 7}],
    [{"name": "fz-e", "inputHash": "h", "traceId": 1}],
    [{"name": f"fz-{i}", "inputHash": "h"} for i in range(1001)],  # over the batch limit
]
IDENTIFIER = [123, True, [], {}, "", "x" * 300, "a\x00b", "\ud800"]
TEXT = [123, [], {}, "\x00", "y" * 70_000]
OBJ = [1, "s", [], True]
INT = ["1", 1.5, -1, 2**70, 10**400, True]
NUMBER = ["1", -1, 1e300, 10**400, -(10**400), True, []]
BOOL = ["true", 1, []]
ENUM = ["nope", 1]
URL = ["not a url", "ftp://x/y", 5, "http://"]
CHANNELS = [
    1,
    [1],
    [{"type": "sms", "url": "http://x"}],
    [{"type": "webhook"}],
    [{"type": "webhook", "url": "ftp://x"}],
    [{"type": "webhook", "url": "http://x", "events": "all"}],
    [{"type": "webhook", "url": "http://x", "secret": 5}],
]
JSON_ANY = ["\ud800", {"\x00": 1}]


def _routes(ids: dict[str, str]) -> list[tuple[str, str, dict[str, Any], dict[str, list]]]:
    run, step, gate = ids["run"], ids["step"], ids["gate"]
    step_key = {"leaseOwner": "w1", "name": "fz", "inputHash": "h"}
    step_fields = {
        "leaseOwner": IDENTIFIER,
        "name": IDENTIFIER,
        "inputHash": TEXT,
        "parent": IDENTIFIER,
        "options": OBJ,
        "input": JSON_ANY,
        "leaseMs": INT,
    }
    return [
        (
            "POST",
            "/runs/wf",
            {},
            {"metadata": OBJ, "recoveryWebhook": URL, "channels": CHANNELS, "input": JSON_ANY},
        ),
        (
            "POST",
            f"/runs/{run}/begin",
            {"leaseOwner": "w1"},
            {
                "leaseOwner": IDENTIFIER,
                "workflowName": IDENTIFIER,
                "create": BOOL,
                "leaseMs": INT,
                "traceId": TEXT,
                "spanId": TEXT,
            },
        ),
        (
            "POST",
            f"/runs/{run}/heartbeat",
            {"leaseOwner": "w1"},
            {"leaseOwner": IDENTIFIER, "leaseMs": INT},
        ),
        (
            "POST",
            f"/runs/{run}/complete",
            {"leaseOwner": "w1"},
            {"leaseOwner": IDENTIFIER, "result": JSON_ANY},
        ),
        (
            "POST",
            f"/runs/{run}/fail",
            {"leaseOwner": "w1"},
            {"leaseOwner": IDENTIFIER, "failureClass": TEXT, "error": JSON_ANY},
        ),
        ("POST", f"/runs/{run}/cancel", {}, {"reason": TEXT, "actor": TEXT}),
        ("POST", f"/runs/{run}/release", {"leaseOwner": "nobody"}, {"leaseOwner": IDENTIFIER}),
        (
            "POST",
            f"/runs/{run}/steps/begin",
            {"name": "fz", "inputHash": "h"},
            {
                "name": IDENTIFIER,
                "inputHash": TEXT,
                "options": OBJ,
                "leaseOwner": IDENTIFIER,
                "input": JSON_ANY,
                "leaseMs": INT,
            },
        ),
        (
            "POST",
            f"/runs/{run}/steps/{step}/complete",
            {"leaseOwner": "w1"},
            {"leaseOwner": IDENTIFIER, "output": JSON_ANY},
        ),
        (
            "POST",
            f"/runs/{run}/steps/{step}/fail",
            {"leaseOwner": "w1"},
            {
                "leaseOwner": IDENTIFIER,
                "retryable": BOOL,
                "resumeDecision": ENUM,
                "error": JSON_ANY,
            },
        ),
        ("POST", f"/runs/{run}/steps/start", step_key, step_fields),
        (
            "POST",
            f"/runs/{run}/steps/checkpoint",
            step_key,
            {**step_fields, "output": JSON_ANY, "traceId": TEXT, "spanId": TEXT},
        ),
        (
            "POST",
            f"/runs/{run}/steps/checkpoints",
            {"leaseOwner": "w1", "checkpoints": [{"name": "fz", "inputHash": "h"}]},
            {"leaseOwner": IDENTIFIER, "leaseMs": INT, "checkpoints": CHECKPOINTS},
        ),
        (
            "POST",
            f"/runs/{run}/steps/failure",
            {**step_key, "status": "failed", "resumeDecision": "safe_replay"},
            {**step_fields, "status": ENUM, "resumeDecision": ENUM, "error": JSON_ANY},
        ),
        (
            "POST",
            f"/runs/{run}/steps/resolve",
            {"name": "fz", "retry": True},
            {"name": IDENTIFIER, "retry": BOOL},
        ),
        (
            "PUT",
            f"/runs/{run}/state",
            {"value": {}},
            {
                "value": JSON_ANY,
                "stream": IDENTIFIER,
                "label": TEXT,
                "reason": TEXT,
                "importance": ENUM,
                "metadata": OBJ,
                "createdBy": TEXT,
                "leaseOwner": IDENTIFIER,
                "step": IDENTIFIER,
            },
        ),
        (
            "PATCH",
            f"/runs/{run}/state",
            {"value": {}},
            {
                "value": [1, "s", [1], True],
                "stream": IDENTIFIER,
                "importance": ENUM,
                "metadata": OBJ,
            },
        ),
        (
            "POST",
            f"/runs/{run}/state/save",
            {"label": "l"},
            {"label": TEXT, "stream": IDENTIFIER, "importance": ENUM, "metadata": OBJ},
        ),
        (
            "POST",
            f"/runs/{run}/snapshots",
            {"label": "l"},
            {
                "label": TEXT,
                "target": [
                    1,
                    "s",
                    {"type": "t"},
                    {"type": 1, "id": "x"},
                    {"type": "t" * 200, "id": "i" * 200},
                ],
                "metadata": OBJ,
                "state": JSON_ANY,
            },
        ),
        (
            "POST",
            f"/runs/{run}/usage",
            {},
            {
                "stepId": IDENTIFIER,
                "kind": TEXT,
                "provider": TEXT,
                "quantity": NUMBER,
                "inputTokens": INT,
                "outputTokens": INT,
                "totalTokens": INT,
                "costUsd": [*NUMBER, 1e12],
                "metadata": OBJ,
                "key": IDENTIFIER,
                "leaseOwner": IDENTIFIER,
                "stepName": IDENTIFIER,
            },
        ),
        (
            "POST",
            f"/runs/{run}/gates/begin",
            {"name": "fz-gate", "prompt": "p"},
            {
                "name": IDENTIFIER,
                "prompt": TEXT,
                "channels": CHANNELS,
                "timeoutMs": [*INT, 0],
                "data": JSON_ANY,
            },
        ),
        (
            "POST",
            f"/runs/{run}/gates/{gate}/resolve",
            {"token": "t", "decision": "approved"},
            {"token": TEXT, "decision": ENUM, "actor": TEXT, "payload": JSON_ANY},
        ),
        (
            "POST",
            f"/runs/{run}/children",
            {"name": "fz-child", "workflowName": "w"},
            {
                "name": IDENTIFIER,
                "workflowName": IDENTIFIER,
                "metadata": OBJ,
                "recoveryWebhook": URL,
                "channels": CHANNELS,
                "edgeType": IDENTIFIER,
                "edgeMetadata": OBJ,
            },
        ),
    ]


@pytest.fixture
async def ids(api: httpx.AsyncClient) -> dict[str, str]:
    run = await create_run(api, "fuzz")
    await begin_run(api, run["id"], "w1")
    step = (await begin_step(api, run["id"], "target", leaseOwner="w1"))["step"]
    gate = (
        await api.post(f"/runs/{run['id']}/gates/begin", json={"name": "target", "prompt": "p"})
    ).json()["gate"]
    return {"run": run["id"], "step": step["id"], "gate": gate["id"]}


async def _check(
    api: httpx.AsyncClient, conn: asyncpg.Connection, method: str, path: str, content: bytes
) -> httpx.Response:
    before = await conn.fetchrow(FINGERPRINT)
    response = await api.request(
        method, path, content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code < 500, (method, path, content[:200], response.text[:300])
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/json")
        assert "error" in response.json()
        assert await conn.fetchrow(FINGERPRINT) == before, (method, path, content[:200])
    return response


async def test_malformed_json_is_400_everywhere(api, db, ids) -> None:
    for method, path, _, _ in _routes(ids):
        for raw in RAW_BODIES:
            response = await _check(api, db, method, path, raw)
            assert response.status_code == 400, (path, raw[:60], response.text[:200])


async def test_wrongly_typed_fields_are_4xx_and_name_the_field(api, db, ids) -> None:
    for method, path, base, fields in _routes(ids):
        for field, values in fields.items():
            for value in values:
                body = {**base, field: value}
                raw = json.dumps(body).encode()
                response = await _check(api, db, method, path, raw)
                if response.status_code == 400:
                    text = response.text
                    assert field in text or "body" in text, (path, field, value, text[:200])


async def test_lone_surrogates_are_4xx_or_ignored_never_500(api, db, ids) -> None:
    """A lone UTF-16 surrogate is valid JSON and not valid text: the 400 that quotes it (a key
    in the path of a field) must still be written, and the connection stay usable."""
    extras = ('"\\ud800": 1', '"input": {"\\ud800": 1}', '"metadata": {"a\\udfff": "\\ud800"}')
    for method, path, base, _ in _routes(ids):
        for extra in extras:
            opening = json.dumps(base)[:-1] + ("," if base else "")
            await _check(api, db, method, path, (opening + extra + "}").encode())
    assert (await api.get("/health")).status_code == 200


async def test_whatever_nesting_is_accepted_reads_back(api, db) -> None:
    """The write path accepted 963 levels that the read path could not decode (a 500 on
    every later GET): the limit is now one both paths handle."""
    from tidebase.server.body import MAX_DEPTH

    def nested(levels: int) -> Any:
        value: Any = 1
        for _ in range(levels):
            value = {"a": value}
        return value

    deepest = nested(MAX_DEPTH - 2)  # inside {"input": ...}: MAX_DEPTH levels in all
    created = await api.post("/runs/deep-wf", json={"input": deepest})
    assert created.status_code in (200, 201), created.text[:200]
    run_id = created.json()["run"]["id"]
    detail = await api.get(f"/runs/{run_id}")
    assert detail.status_code == 200 and detail.json()["run"]["input"] == deepest
    assert (await api.get("/runs", params={"workflow": "deep-wf"})).status_code == 200
    raw = json.dumps({"input": nested(MAX_DEPTH)}).encode()
    refused = await _check(api, db, "POST", "/runs/deep-wf", raw)
    assert refused.status_code == 400 and "nested more than" in refused.text


async def test_missing_required_fields_are_400(api, db, ids) -> None:
    required = {
        f"/runs/{ids['run']}/steps/begin": ["name", "inputHash"],
        f"/runs/{ids['run']}/steps/{ids['step']}/complete": ["leaseOwner"],
        f"/runs/{ids['run']}/steps/checkpoint": ["leaseOwner", "name", "inputHash"],
        f"/runs/{ids['run']}/steps/checkpoints": ["leaseOwner", "checkpoints"],
        f"/runs/{ids['run']}/state/save": ["label"],
        f"/runs/{ids['run']}/snapshots": ["label"],
        f"/runs/{ids['run']}/gates/begin": ["name", "prompt"],
        f"/runs/{ids['run']}/gates/{ids['gate']}/resolve": ["token", "decision"],
        f"/runs/{ids['run']}/children": ["name", "workflowName"],
    }
    bases = {path: base for _, path, base, _ in _routes(ids)}
    for path, names in required.items():
        for name in names:
            body = {k: v for k, v in bases[path].items() if k != name}
            response = await _check(api, db, "POST", path, json.dumps(body).encode())
            assert response.status_code == 400, (path, name)
            assert name in response.json()["message"]


async def test_bad_path_and_query_parameters(api, db, ids) -> None:
    run = ids["run"]
    for method, path in [
        ("GET", "/runs/run%00x"),
        ("POST", "/runs/%ff%fe/begin"),
        ("POST", "/runs/wf%00"),
        ("GET", "/runs/" + "r" * 300),
        ("GET", f"/runs/{run}/gates/%c3%28"),
        ("GET", f"/runs/{run}/events?after=abc"),
        ("GET", f"/runs/{run}/events?after=-5"),
        ("GET", f"/runs/{run}/events?after=99999999999999999999999"),
        ("GET", "/runs?limit=-1"),
        ("GET", "/runs?cursor=%%%"),
        ("GET", "/runs?status=%00"),
        ("GET", f"/runs/{run}/state/versions?stream=" + "s" * 300),
    ]:
        response = await _check(api, db, method, path, b"")
        assert response.status_code in (400, 404), (path, response.status_code, response.text)


async def test_oversized_body_is_413(api, db, ids) -> None:
    big = json.dumps({"value": "x" * (300 * 1024)}).encode()  # the test server allows 256 KiB
    response = await _check(api, db, "PUT", f"/runs/{ids['run']}/state", big)
    assert response.status_code == 413
    assert response.json()["error"] == "request body too large"


async def test_oversized_body_without_content_length_is_413(api, db, ids) -> None:
    async def chunks():
        for _ in range(300):
            yield b" " * 1024

    before = await db.fetchrow(FINGERPRINT)
    response = await api.put(f"/runs/{ids['run']}/state", content=chunks())
    assert response.status_code == 413
    assert await db.fetchrow(FINGERPRINT) == before


async def test_extension_step_options_are_validated(api) -> None:
    """The SDK's step routes refuse a resume contract the server cannot honour."""
    import uuid as _uuid

    run_id = "opts-" + _uuid.uuid4().hex
    begun = await api.post(
        f"/runs/{run_id}/begin", json={"workflowName": "w", "create": True, "leaseOwner": "o"}
    )
    assert begun.status_code == 200
    for options, field in (
        ({"retries": "lots"}, "options.retries"),
        ({"retries": -5}, "options.retries"),
        ({"replay": "sometimes"}, "options.replay"),
        ({"sideEffects": "ticket"}, "options.sideEffects"),
        ({"idempotencyKey": 5}, "options.idempotencyKey"),
    ):
        for route in ("checkpoint", "start"):
            answer = await api.post(
                f"/runs/{run_id}/steps/{route}",
                json={
                    "leaseOwner": "o",
                    "name": "s",
                    "inputHash": "h",
                    "options": options,
                    "output": 1,
                },
            )
            assert answer.status_code == 400, (route, options, answer.text)
            assert field in answer.text
    detail = (await api.get(f"/runs/{run_id}")).json()
    assert detail["steps"] == []


async def test_step_id_with_lease_owner_is_refused(api) -> None:
    import uuid as _uuid

    run_id = "use-" + _uuid.uuid4().hex
    await api.post(
        f"/runs/{run_id}/begin", json={"workflowName": "w", "create": True, "leaseOwner": "o"}
    )
    answer = await api.post(
        f"/runs/{run_id}/usage",
        json={"leaseOwner": "o", "stepId": "nope", "inputTokens": 1, "key": "k9"},
    )
    assert answer.status_code == 400 and "stepId" in answer.text
    assert (await api.get(f"/runs/{run_id}")).json()["usage"] == []
