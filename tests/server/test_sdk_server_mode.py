"""Our SDK in server mode (TIDEBASE_URL=http://...): what is specific to the HTTP store.

The SDK's behaviour suite (tests/test_*.py) runs in both modes through the `tide` and
`make_client` fixtures; these tests cover what only server mode has: the wire, the API key,
retries, unreachable servers, trace context, odd run ids."""

from __future__ import annotations

import socket
import time
import uuid
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tidebase import (
    ConfigurationError,
    InputMismatch,
    LeaseLost,
    RunCancelled,
    StepNeedsReview,
    StoreUnavailable,
)
from tidebase.aio import AsyncTidebase
from tidebase.server import ServerConfig
from tidebase.server.background import BackgroundServer
from tidebase.store.http import HttpStore

from .wire_client import API_KEY


@pytest.fixture
async def tide(server: BackgroundServer):
    client = AsyncTidebase(server.url)
    yield client
    await client.close()


def _run_id() -> str:
    return f"run_{uuid.uuid4().hex}"


async def test_steps_replay_from_the_begin_answer(tide: AsyncTidebase, api) -> None:
    calls: list[str] = []

    async def pipeline(run, input):
        a = await run.step("a", lambda: calls.append("a") or {"n": input["n"]}, input=input)
        b = await run.step("b", lambda: calls.append("b") or (1, 2), side_effects=["read"])
        await run.state_set({"phase": "done"})
        await run.usage_record(provider="p", model="m", input_tokens=3, output_tokens=4)
        return {"a": a, "b": b, "state": await run.state_get()}

    run_id = _run_id()
    first = await tide.run("wf", pipeline, run_id=run_id, input={"n": 1})
    assert first == {"a": {"n": 1}, "b": (1, 2), "state": {"phase": "done"}}
    assert await tide.run("wf", pipeline, run_id=run_id, input={"n": 1}) == first
    assert calls == ["a", "b"]
    detail = await tide.get_run(run_id)
    assert detail["run"]["status"] == "completed"
    assert [s["name"] for s in detail["steps"]] == ["a", "b"]
    assert detail["usage"][0]["total_tokens"] == 7 and detail["usage"][0]["record_key"] == "run:1"
    wire = (await api.get(f"/runs/{run_id}")).json()
    assert wire["steps"][0]["output"] == {"n": 1}


async def test_exceptions_are_the_direct_mode_ones(tide: AsyncTidebase) -> None:
    run_id = _run_id()

    async def first(run, input):
        await run.step("s", lambda: 1, input={"v": 1})
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        await tide.run("wf", first, run_id=run_id)

    async def changed(run, input):
        return await run.step("s", lambda: 1, input={"v": 2})

    with pytest.raises(InputMismatch) as mismatch:
        await tide.run("wf", changed, run_id=run_id)
    assert "'s'" in str(mismatch.value)

    async def parks(run, input):
        return await run.step("ticket", _boom, side_effects=["ticket.create"])

    parked_id = _run_id()
    with pytest.raises(ValueError, match="boom"):
        await tide.run("wf", parks, run_id=parked_id)
    with pytest.raises(StepNeedsReview):
        await tide.run("wf", parks, run_id=parked_id)
    store = await tide.store()
    await store.resolve_step(parked_id, "ticket", output={"ticket": 7})
    assert await tide.run("wf", parks, run_id=parked_id) == {"ticket": 7}


def _boom() -> None:
    raise ValueError("boom")


async def test_cancel_is_noticed_at_the_next_step(tide: AsyncTidebase, api) -> None:
    run_id = _run_id()

    async def pipeline(run, input):
        await run.step("one", lambda: 1)
        await api.post(f"/runs/{run_id}/cancel", json={"reason": "stop"})
        await run.step("two", lambda: 2)

    with pytest.raises(RunCancelled, match="stop"):
        await tide.run("wf", pipeline, run_id=run_id)


async def test_a_fenced_out_worker_gets_lease_lost(tide: AsyncTidebase, api) -> None:
    run_id = _run_id()

    async def pipeline(run, input):
        await run.step("one", lambda: 1)
        # Another worker takes the run over (its lease expired, say).
        await api.post(f"/runs/{run_id}/heartbeat", json={"leaseOwner": run.lease_owner})
        await api.post(
            f"/runs/{run_id}/fail",
            json={"error": {"message": "taken"}, "leaseOwner": run.lease_owner},
        )
        await api.post(f"/runs/{run_id}/begin", headers={"x-tidebase-worker": "other"})
        await run.step("two", lambda: 2)

    with pytest.raises(LeaseLost):
        await tide.run("wf", pipeline, run_id=run_id)
    steps = (await api.get(f"/runs/{run_id}")).json()["steps"]
    assert [s["name"] for s in steps] == ["one"]  # the zombie wrote nothing


async def test_run_ids_with_any_characters(tide: AsyncTidebase) -> None:
    run_id = f"job/{uuid.uuid4().hex}?x=1#frag %2F é"

    async def pipeline(run, input):
        return await run.step("s", lambda: run.run_id)

    assert await tide.run("wf/with slash", pipeline, run_id=run_id) == run_id
    assert (await tide.get_run(run_id))["run"]["workflow_name"] == "wf/with slash"


async def test_api_key(secured_server: BackgroundServer) -> None:
    async def pipeline(run, input):
        return await run.step("s", lambda: "ok")

    async with AsyncTidebase(secured_server.url, api_key=API_KEY) as tide:
        assert await tide.run("wf", pipeline) == "ok"
    async with AsyncTidebase(secured_server.url, api_key="wrong") as tide:
        with pytest.raises(ConfigurationError, match="unauthorized"):
            await tide.run("wf", pipeline)


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_unreachable_server_names_the_url() -> None:
    url = f"http://127.0.0.1:{_dead_port()}"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        await HttpStore.connect(url, retries=2)
    assert url in str(caught.value) and "tidebase serve" in str(caught.value)
    assert time.monotonic() - started < 5
    tide = AsyncTidebase(url)
    with pytest.raises(StoreUnavailable, match=url.replace(".", r"\.")):
        await tide.run("wf", lambda run, input: None)


class Flaky(httpx.AsyncBaseTransport):
    """Fails the first requests in the given ways, then passes them on."""

    def __init__(self, inner: httpx.AsyncBaseTransport, failures: list[Any]):
        self.inner = inner
        self.failures = list(failures)
        self.sent: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(f"{request.method} {request.url.path}")
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, int):
                return httpx.Response(failure, json={"error": "gateway"}, request=request)
            if failure is httpx.ReadError:  # sent, then the connection broke
                await self.inner.handle_async_request(request)
            raise failure("injected", request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _flaky_store(url: str, failures: list[Any]) -> tuple[HttpStore, Flaky]:
    transport = Flaky(httpx.AsyncHTTPTransport(), failures)
    client = httpx.AsyncClient(
        base_url=url, transport=transport, headers={"content-type": "application/json"}
    )
    return HttpStore(client, url, backoff_s=0.01), transport


async def test_idempotent_requests_are_retried(server: BackgroundServer, api) -> None:
    begun = await api.post(
        "/runs/flaky-" + uuid.uuid4().hex + "/begin",
        json={"workflowName": "w", "create": True, "leaseOwner": "o"},
    )
    run_id = begun.json()["run"]["id"]
    store, transport = _flaky_store(
        server.url, [httpx.ConnectError, 503, httpx.ReadError, 502, httpx.RemoteProtocolError]
    )
    from tidebase.store.base import StepKey

    key = StepKey(run_id, "o", "s", None, "h", None, {})
    written = await store.complete_step(key, {"v": 1}, None, 60_000)
    # The ReadError attempt was applied by the server: the repeat returns its checkpoint.
    assert written.action == "return" and written.step.output == {"v": 1}
    assert len(transport.sent) == 6
    await store.heartbeat(run_id, "o", 60_000)
    await store.close()


async def test_unsafe_writes_are_not_repeated_once_sent(server: BackgroundServer, api) -> None:
    begun = await api.post(
        "/runs/flaky-" + uuid.uuid4().hex + "/begin",
        json={"workflowName": "w", "create": True, "leaseOwner": "o"},
    )
    run_id = begun.json()["run"]["id"]
    store, transport = _flaky_store(server.url, [httpx.ReadError])
    with pytest.raises(StoreUnavailable, match="not safe to repeat"):
        await store.write_state(run_id, "o", {"v": 1}, patch=False, step=None)
    assert len(transport.sent) == 1
    versions = (await api.get(f"/runs/{run_id}/state/versions")).json()["stateVersions"]
    assert len(versions) == 1  # written once, not twice
    # Never sent (connection refused): safe to retry whatever it is.
    store2, transport2 = _flaky_store(server.url, [httpx.ConnectError])
    await store2.write_state(run_id, "o", {"v": 2}, patch=False, step=None)
    assert len(transport2.sent) == 2
    await store.close()
    await store2.close()


async def test_trace_context_is_sent_and_continued(pg_url: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with BackgroundServer(ServerConfig(database_url=pg_url), tracer_provider=provider) as traced:
        store = await HttpStore.connect(traced.url)
        with tracer.start_as_current_span("client-step") as span:
            with pytest.raises(Exception):  # noqa: B017 - any answer will do: it was traced
                await store.heartbeat("run_nope", "o", 60_000)
        await store.close()
        client_ctx = span.get_span_context()
    server_spans = [s for s in exporter.get_finished_spans() if s.kind == trace.SpanKind.SERVER]
    assert server_spans, [s.name for s in exporter.get_finished_spans()]
    traced_span = server_spans[-1]
    assert traced_span.name == "POST /runs/{runId}/heartbeat"
    assert traced_span.context.trace_id == client_ctx.trace_id
    assert traced_span.parent.span_id == client_ctx.span_id
    assert traced_span.attributes["http.response.status_code"] == 404


async def test_server_spans_sit_under_the_sdk_spans(pg_url: str) -> None:
    """With tidebase_otel on, each request's server span continues the SDK's trace: requests
    made while a step runs sit under that step's span, the others under the run's span (the
    run's begin is sent before the run span is current, so it starts its own trace)."""
    import tidebase_otel

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tidebase_otel.instrument(tracer_provider=provider)
    try:
        with BackgroundServer(
            ServerConfig(database_url=pg_url), tracer_provider=provider
        ) as traced:
            async with AsyncTidebase(traced.url) as tide:

                async def research(run):
                    await run.usage_record(provider="p", model="m", input_tokens=1)
                    return "facts"

                async def pipeline(run, input):
                    return await run.step("research", lambda: research(run))

                assert await tide.run("traced", pipeline) == "facts"
    finally:
        tidebase_otel.uninstrument()
        provider.shutdown()
    spans = exporter.get_finished_spans()
    run_span = next(s for s in spans if s.name == "run traced")
    step_span = next(s for s in spans if s.name == "step research")
    server = {s.name: s for s in spans if s.kind == trace.SpanKind.SERVER}
    in_run = [n for n in server if n not in ("GET /health", "POST /runs/{runId}/begin")]
    assert {server[n].context.trace_id for n in in_run} == {run_span.context.trace_id}
    # Made by the step function: under the step's span.
    assert server["POST /runs/{runId}/usage"].parent.span_id == step_span.context.span_id
    # Written once the step function has returned (the SDK's run span is current then).
    for name in ("POST /runs/{runId}/steps/checkpoint", "POST /runs/{runId}/complete"):
        assert server[name].parent.span_id == run_span.context.span_id
