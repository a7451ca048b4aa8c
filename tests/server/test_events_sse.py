"""The events stream: SSE replay from `?after=`, live events, and live across two server
replicas (Postgres LISTEN/NOTIFY), over real sockets."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tidebase.server.background import BackgroundServer

from .wire_client import API_KEY, begin_run, create_run


class SSEReader:
    """Reads the events of one open stream, checking the SSE framing (`id:` then `data:`)."""

    def __init__(self, response: httpx.Response):
        self._lines = response.aiter_lines()

    async def read(self, count: int, timeout: float = 10.0) -> list[dict]:
        events: list[dict] = []
        ids: list[int] = []
        async with asyncio.timeout(timeout):
            while len(events) < count:
                line = await anext(self._lines)
                if line.startswith("id: "):
                    ids.append(int(line[4:]))
                elif line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        assert ids == [e["seq"] for e in events]
        return events


async def _read(response: httpx.Response, count: int, timeout: float = 10.0) -> list[dict]:
    reader = response.extensions.setdefault("sse_reader", SSEReader(response))
    return await reader.read(count, timeout)


async def test_replay_then_live(api: httpx.AsyncClient) -> None:
    run = await create_run(api)
    await begin_run(api, run["id"])
    async with api.stream("GET", f"/runs/{run['id']}/events", params={"after": 1}) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        replayed = await _read(stream, 1)
        assert [(e["seq"], e["type"]) for e in replayed] == [(2, "run.started")]
        assert set(replayed[0]) == {"id", "runId", "seq", "type", "payload", "createdAt"}
        await api.put(f"/runs/{run['id']}/state", json={"value": {"n": 1}})
        await api.post(f"/runs/{run['id']}/complete", json={"result": "ok"})
        live = await _read(stream, 2)
        assert [(e["seq"], e["type"]) for e in live] == [(3, "state.updated"), (4, "run.completed")]


async def test_replay_from_the_start_by_default(api: httpx.AsyncClient) -> None:
    run = await create_run(api)
    async with api.stream("GET", f"/runs/{run['id']}/events") as stream:
        assert [e["type"] for e in await _read(stream, 1)] == ["run.created"]


async def test_live_events_from_another_replica(
    api: httpx.AsyncClient, replica: BackgroundServer
) -> None:
    """A subscriber on one server sees events written through another (LISTEN/NOTIFY)."""
    run = await create_run(api)
    async with (
        httpx.AsyncClient(base_url=replica.url, timeout=30) as other,
        other.stream("GET", f"/runs/{run['id']}/events") as stream,
    ):
        assert [e["type"] for e in await _read(stream, 1)] == ["run.created"]
        for i in range(20):  # written through the first server only
            await api.post(f"/runs/{run['id']}/usage", json={"quantity": i})
        # Well under the 1 s keep-alive re-read: these arrive by notification.
        live = await _read(stream, 20, timeout=5)
        assert [e["seq"] for e in live] == list(range(2, 22))
        assert all(e["type"] == "usage.recorded" for e in live)


async def test_many_writers_one_stream_no_gaps(api: httpx.AsyncClient) -> None:
    run = await create_run(api)
    async with api.stream("GET", f"/runs/{run['id']}/events") as stream:
        await asyncio.gather(
            *(api.post(f"/runs/{run['id']}/usage", json={"quantity": i}) for i in range(30))
        )
        events = await _read(stream, 31)
        assert [e["seq"] for e in events] == list(range(1, 32))


async def test_stream_errors(api: httpx.AsyncClient) -> None:
    missing = await api.get("/runs/run_nope/events")
    assert missing.status_code == 404 and missing.json() == {"error": "run not found"}
    run = await create_run(api)
    for after in ("x", "-1"):
        bad = await api.get(f"/runs/{run['id']}/events", params={"after": after})
        assert bad.status_code == 400


@pytest.mark.parametrize("how", ["header", "query"])
async def test_stream_accepts_the_key_as_header_or_token(
    secured_server: BackgroundServer, how: str
) -> None:
    headers = {"authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=secured_server.url, timeout=30) as client:
        run = (await client.post("/runs/wf", json={}, headers=headers)).json()["run"]
        kwargs = {"headers": headers} if how == "header" else {"params": {"token": API_KEY}}
        async with client.stream("GET", f"/runs/{run['id']}/events", **kwargs) as stream:
            assert stream.status_code == 200
            assert [e["type"] for e in await _read(stream, 1)] == ["run.created"]
        denied = await client.get(f"/runs/{run['id']}/events", params={"token": "wrong"})
        assert denied.status_code == 401
