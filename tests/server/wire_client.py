"""Plain-HTTP helpers for the wire API tests (what a 0.7 client sends)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

API_KEY = "test-key-" + uuid.uuid4().hex


async def create_run(api: httpx.AsyncClient, workflow: str = "wf", **body: Any) -> dict:
    response = await api.post(f"/runs/{workflow}", json=body)
    assert response.status_code == 200, response.text
    return response.json()["run"]


async def begin_run(api: httpx.AsyncClient, run_id: str, worker: str = "w1") -> dict:
    response = await api.post(f"/runs/{run_id}/begin", headers={"x-tidebase-worker": worker})
    assert response.status_code == 200, response.text
    return response.json()


async def begin_step(
    api: httpx.AsyncClient, run_id: str, name: str, input_hash: str = "h1", **body: Any
) -> dict:
    response = await api.post(
        f"/runs/{run_id}/steps/begin", json={"name": name, "inputHash": input_hash, **body}
    )
    assert response.status_code == 200, response.text
    return response.json()


async def detail(api: httpx.AsyncClient, run_id: str) -> dict:
    response = await api.get(f"/runs/{run_id}")
    assert response.status_code == 200, response.text
    return response.json()
