"""The HTTP store (server mode): the SDK's `Store` over the Tidebase HTTP API of `tidebase serve`.

One pooled `httpx.AsyncClient` (keep-alive) per store. Each SDK operation is one
request to a fast-path endpoint that runs the same SQL function as direct mode, so both modes
store the same data and raise the same exceptions (`LeaseLost`, `RunCancelled`,
`InputMismatch`, `RunNotFound`; `StoreUnavailable` naming the URL when the server cannot be
reached; `ConfigurationError` when it refuses the API key). Sends `Authorization: Bearer
<api key>` when one is configured and the W3C `traceparent` of the current span.

Retries. A request that was never sent (connection refused, connect timeout, no free pooled
connection) is retried with exponential backoff whatever it is. A request whose outcome is
unknown (connection lost after sending, read timeout, 502/503/504) is retried only when
repeating it is safe:
- reads, heartbeats, and checkpoint writes (fenced by the run lease, `ON CONFLICT`): a repeat
  returns the first write's result;
- run completion/failure: a repeat by the same lease owner answers "already done";
- run begin: a repeat by the same lease owner keeps its attempt and lease;
- step start/failure: a repeat by the same lease owner at most counts one extra step attempt
  (the lease and the checkpoints are unaffected);
- usage records (idempotent per record key): a repeat records nothing; if the first write did
  land, the repeat reports `inserted=False`, so telemetry may undercount that one record but
  never double-counts it.
State writes (a repeat would append another version) and operator resolves are not retried
once sent.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import functools
import json
import random
import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from httpx_aiohttp import AiohttpTransport

from tidebase import codec
from tidebase.errors import (
    ConfigurationError,
    InputMismatch,
    LeaseLost,
    RunCancelled,
    RunNotFound,
    StoreUnavailable,
    TidebaseError,
)
from tidebase.hooks import SpanRef
from tidebase.store.base import (
    MAX_CHECKPOINT_BATCH,
    BeginResult,
    Checkpoint,
    EnqueueRequest,
    StepKey,
    StepRecord,
    StepWrite,
    UsageRecord,
)

try:
    from opentelemetry.propagate import inject as _inject_trace_context
except ImportError:  # pragma: no cover - the API is a dependency
    _inject_trace_context = None


class ServerError(TidebaseError):
    """The server answered with an error this SDK has no specific exception for."""

    def __init__(self, status: int, body: str, path: str):
        super().__init__(f"Tidebase server error {status} on {path}: {body[:500]}")
        self.status, self.body, self.path = status, body, path


class ServerRejected(ServerError, ValueError):
    """The server refused the request as invalid (400/413); nothing was written."""


# Sent, outcome unknown: retried only for requests that are safe to repeat.
_AMBIGUOUS = (
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.ReadTimeout,
    httpx.WriteTimeout,
)
# Never sent: always safe to retry.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_RETRY_STATUS = frozenset({502, 503, 504})
_STAMP_SUFFIX = "_at"


@functools.lru_cache(maxsize=512)
def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _snake_keys(obj: dict[str, Any]) -> dict[str, Any]:
    """A wire (camelCase) object with snake_case keys, as direct mode's rows have them."""
    return {_snake(k): v for k, v in obj.items()}


def _row(obj: dict[str, Any]) -> dict[str, Any]:
    """A wire object as direct mode returns a row: snake_case, datetimes, Decimal costs."""
    row = {}
    for key, value in obj.items():
        name = _snake(key)
        if isinstance(value, str) and name.endswith(_STAMP_SUFFIX):
            try:
                value = _dt.datetime.fromisoformat(value)
            except ValueError:
                pass
        elif name == "cost_usd" and isinstance(value, (int, float)):
            value = Decimal(str(value))
        row[name] = value
    return row


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


@functools.lru_cache(maxsize=4096)
def _parsed_url(url: str) -> httpx.URL:
    """httpx parses a URL string on every request (~60% of building one); a run's steps reuse
    the same few URLs, and `httpx.URL` is immutable."""
    return httpx.URL(url)


class HttpStore:
    """Server mode: talks to `tidebase serve` (or any server speaking the Tidebase HTTP API).

    Requests go through one `httpx.AsyncClient`: a keep-alive connection pool, TLS and proxies
    from the environment.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout_s: float = 30.0,
        retries: int = 6,
        backoff_s: float = 0.1,
        max_backoff_s: float = 2.0,
    ):
        self._client = client
        self._base = url.rstrip("/")
        self.url_for_display = self._base
        self._headers = list((headers or dict(client.headers)).items())
        connect = min(timeout_s, 10.0)
        self._timeout = {
            "connect": connect,
            "read": timeout_s,
            "write": timeout_s,
            "pool": timeout_s,
        }
        self._retries = retries
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        retries: int = 6,
        check: bool = True,
    ) -> HttpStore:
        """A store for the server at `url`; checks that it answers unless `check` is False."""
        headers = {
            "content-type": "application/json",
            "accept": "application/json",
            "accept-encoding": "identity",
        }
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        base_url = url.rstrip("/")
        limits = httpx.Limits(
            max_connections=100, max_keepalive_connections=100, keepalive_expiry=4.0
        )
        client = httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            limits=limits,
            transport=AiohttpTransport(limits=limits),
        )
        store = cls(
            client,
            base_url,
            headers=headers,
            timeout_s=timeout_s,
            retries=retries,
        )
        if check:
            try:
                await store._request("GET", "/health", idempotent=True)
            except BaseException:
                await client.aclose()
                raise
        return store

    async def close(self) -> None:
        await self._client.aclose()

    # -- transport -------------------------------------------------------------------------

    async def _send(self, request: httpx.Request) -> httpx.Response:
        return await self._client.send(request)

    async def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        idempotent: bool,
        params: dict[str, Any] | None = None,
    ) -> httpx.Response:
        url = self._base + path
        if params:
            url += "?" + urlencode(params)
        headers = self._headers
        if _inject_trace_context is not None:
            carrier: dict[str, str] = {}
            _inject_trace_context(carrier)
            if carrier:
                headers = [*headers, *carrier.items()]
        request = httpx.Request(
            method,
            _parsed_url(url),
            headers=headers,
            content=None if body is None else _dumps(body),
            extensions={"timeout": self._timeout},
        )
        tries = 0
        while True:
            try:
                response = await self._send(request)
            except _NOT_SENT as exc:
                failure: Exception = exc
            except _AMBIGUOUS as exc:
                if not idempotent:
                    raise self._unavailable(exc, sent=True) from exc
                failure = exc
            except httpx.HTTPError as exc:
                raise self._unavailable(exc, sent=True) from exc
            else:
                if response.status_code not in _RETRY_STATUS or not idempotent:
                    return response
                failure = StoreUnavailable(f"HTTP {response.status_code}")
            tries += 1
            if tries > self._retries:
                raise self._unavailable(failure, sent=False) from failure
            delay = min(self._backoff_s * 2 ** (tries - 1), self._max_backoff_s)
            await asyncio.sleep(delay * (0.5 + random.random() / 2))

    def _unavailable(self, exc: Exception, *, sent: bool) -> StoreUnavailable:
        what = str(exc) or type(exc).__name__
        if sent:
            return StoreUnavailable(
                f"lost the connection to the Tidebase server at {self.url_for_display} during "
                f"a request that is not safe to repeat ({what})"
            )
        return StoreUnavailable(
            f"cannot reach the Tidebase server at {self.url_for_display} ({what}); is "
            "`tidebase serve` running there?"
        )

    def _decode(self, response: httpx.Response) -> Any:
        try:
            return json.loads(response.content)
        except ValueError:
            return None

    def _fail(
        self, response: httpx.Response, path: str, run_id: str, step: str | None = None
    ) -> Exception:
        """The exception for an error answer (the same types as direct mode)."""
        status = response.status_code
        data = self._decode(response)
        body = data if isinstance(data, dict) else {}
        code = body.get("code")
        message = body.get("message")
        if code == "run_cancelled":
            reason = body.get("reason") or (body.get("run") or {}).get("cancelReason")
            return RunCancelled(run_id, reason)
        if code == "lease_lost":
            return self._lease_lost(run_id, body.get("run"), message)
        if code == "input_mismatch":
            return InputMismatch(
                body.get("step") or step or "?",
                body.get("expectedInputHash", "?"),
                body.get("actualInputHash", "?"),
            )
        if status == 404 and body.get("error") == "run not found":
            return RunNotFound(run_id)
        if status == 401:
            return ConfigurationError(
                f"the Tidebase server at {self.url_for_display} refused the request: "
                "unauthorized (set TIDEBASE_API_KEY to the server's key)"
            )
        if status == 503 and code == "store_unavailable":
            return StoreUnavailable(
                f"the Tidebase server at {self.url_for_display} cannot reach its database"
            )
        if status in (502, 503, 504):
            return StoreUnavailable(
                f"the Tidebase server at {self.url_for_display} is unavailable (HTTP {status})"
            )
        if status in (400, 413):
            return ServerRejected(status, response.text, path)
        return ServerError(status, response.text, path)

    @staticmethod
    def _lease_lost(run_id: str, run: dict[str, Any] | None, message: str | None) -> LeaseLost:
        if run:
            exc = LeaseLost(
                run_id, f": now {run.get('status')}, lease held by {run.get('leaseOwner')!r}"
            )
        else:
            exc = LeaseLost(run_id)
            if message:
                exc.args = (message,)
        return exc

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        run_id: str = "",
        step: str | None = None,
        idempotent: bool = True,
        params: dict[str, Any] | None = None,
    ) -> Any:
        response = await self._request(method, path, body, idempotent=idempotent, params=params)
        if response.status_code >= 400:
            raise self._fail(response, path, run_id, step)
        return self._decode(response)

    @staticmethod
    def _run_path(run_id: str, suffix: str = "") -> str:
        return f"/runs/{quote(run_id, safe='')}{suffix}"

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
        path = self._run_path(run_id, "/begin")
        body = {
            "workflowName": workflow,
            "input": input,
            "create": create,
            "leaseOwner": owner,
            "leaseMs": lease_ms,
            "traceId": span.trace_id if span else None,
            "spanId": span.span_id if span else None,
        }
        if recovery_webhook is not None:
            body["recoveryWebhook"] = recovery_webhook
        response = await self._request("POST", path, body, idempotent=True)
        data = self._decode(response)
        if response.status_code >= 400 and not (
            response.status_code == 409 and isinstance(data, dict) and "outcome" in data
        ):
            raise self._fail(response, path, run_id)
        previous = data.get("previous")
        return BeginResult(
            outcome=data["outcome"],
            run=_snake_keys(data["run"]),
            steps=[StepRecord.from_json(s) for s in data.get("steps") or []],
            previous=SpanRef(previous["traceId"], previous["spanId"]) if previous else None,
        )

    async def heartbeat(self, run_id: str, owner: str, lease_ms: int) -> None:
        await self._call(
            "POST",
            self._run_path(run_id, "/heartbeat"),
            {"leaseOwner": owner, "leaseMs": lease_ms},
            run_id=run_id,
        )

    async def release_run(self, run_id: str, owner: str) -> None:
        """Gives up the lease of an interrupted attempt so the next invocation resumes at once."""
        await self._call(
            "POST", self._run_path(run_id, "/release"), {"leaseOwner": owner}, run_id=run_id
        )

    async def _finish(self, run_id: str, suffix: str, body: dict[str, Any]) -> dict[str, Any]:
        data = await self._call("POST", self._run_path(run_id, suffix), body, run_id=run_id)
        if data.get("outcome") == "cancelled":
            raise RunCancelled(run_id, (data.get("run") or {}).get("cancelReason"))
        return data

    async def complete_run(self, run_id: str, owner: str, result: Any) -> None:
        await self._finish(run_id, "/complete", {"result": result, "leaseOwner": owner})

    async def fail_run(
        self, run_id: str, owner: str, error: dict[str, Any], failure_class: str | None
    ) -> bool:
        data = await self._finish(
            run_id, "/fail", {"error": error, "failureClass": failure_class, "leaseOwner": owner}
        )
        return bool(data.get("requeued"))

    async def cancel_run(
        self, run_id: str, reason: str | None, actor: str | None
    ) -> dict[str, Any]:
        path = self._run_path(run_id, "/cancel")
        response = await self._request(
            "POST", path, {"reason": reason, "actor": actor}, idempotent=True
        )
        data = self._decode(response)
        if response.status_code == 409 and isinstance(data, dict) and data.get("run"):
            return {"outcome": "completed", "run": data["run"]}
        if response.status_code >= 400:
            raise self._fail(response, path, run_id)
        return {"outcome": data.get("outcome", "cancelled"), "run": data["run"]}

    # -- queues ----------------------------------------------------------------------------

    async def enqueue(self, queue: str, request: EnqueueRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "workflowName": request.workflow,
            "input": request.input,
            "metadata": request.metadata,
            "recoveryWebhook": request.recovery_webhook,
            "channels": request.channels,
            "dedupeKey": request.dedupe_key,
            "delayMs": request.delay_ms,
            "runAt": request.run_at.isoformat() if request.run_at is not None else None,
            "maxAttempts": request.max_attempts,
            "priority": request.priority,
            "deadlineMs": request.deadline_ms,
            "traceId": request.span.trace_id if request.span else None,
            "spanId": request.span.span_id if request.span else None,
        }
        return await self._call(
            "POST",
            f"/queues/{quote(queue, safe='')}/enqueue",
            {k: v for k, v in body.items() if v is not None},
            idempotent=request.dedupe_key is not None,
        )

    async def claim(
        self, queues: list[str], owner: str, limit: int, lease_ms: int
    ) -> list[dict[str, Any]]:
        data = await self._call(
            "POST",
            "/queues/claim",
            {"queues": queues, "leaseOwner": owner, "limit": limit, "leaseMs": lease_ms},
            idempotent=False,
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
        body = {
            "concurrency": concurrency,
            "ratePerMinute": rate_per_minute,
            "invokeUrl": invoke_url,
        }
        data = await self._call("PUT", f"/queues/{quote(queue, safe='')}/config", body)
        return data["config"]

    async def list_queues(self) -> list[dict[str, Any]]:
        return (await self._call("GET", "/queues"))["queues"]

    # -- steps -----------------------------------------------------------------------------

    @staticmethod
    def _key_body(key: StepKey) -> dict[str, Any]:
        return {
            "leaseOwner": key.owner,
            "name": key.name,
            "parent": key.parent,
            "inputHash": key.input_hash,
            "input": key.input,
            "options": key.options,
        }

    async def _step_write(self, key: StepKey, suffix: str, body: dict[str, Any]) -> StepWrite:
        data = await self._call(
            "POST", self._run_path(key.run_id, suffix), body, run_id=key.run_id, step=key.name
        )
        return StepWrite(data["action"], StepRecord.from_json(data["step"]))

    async def start_step(self, key: StepKey, lease_ms: int) -> StepWrite:
        body = self._key_body(key)
        body["leaseMs"] = lease_ms
        return await self._step_write(key, "/steps/start", body)

    async def complete_step(
        self, key: StepKey, output: Any, span: SpanRef | None, lease_ms: int
    ) -> StepWrite:
        body = self._key_body(key)
        body.update(
            output=output,
            traceId=span.trace_id if span else None,
            spanId=span.span_id if span else None,
            leaseMs=lease_ms,
        )
        return await self._step_write(key, "/steps/checkpoint", body)

    async def complete_steps(self, checkpoints: Sequence[Checkpoint], lease_ms: int) -> None:
        for start in range(0, len(checkpoints), MAX_CHECKPOINT_BATCH):
            await self._checkpoints(checkpoints[start : start + MAX_CHECKPOINT_BATCH], lease_ms)

    async def _checkpoints(self, batch: Sequence[Checkpoint], lease_ms: int) -> None:
        key = batch[0].key
        body = {
            "leaseOwner": key.owner,
            "leaseMs": lease_ms,
            "checkpoints": [
                {
                    "name": c.key.name,
                    "parent": c.key.parent,
                    "inputHash": c.key.input_hash,
                    "input": c.key.input,
                    "options": c.key.options,
                    "output": c.output,
                    "traceId": c.span.trace_id if c.span else None,
                    "spanId": c.span.span_id if c.span else None,
                }
                for c in batch
            ],
        }
        path = self._run_path(key.run_id, "/steps/checkpoints")
        response = await self._request("POST", path, body, idempotent=True)
        if response.status_code == 413 and len(batch) > 1:
            # Too large for the server's body limit together: halves go separately, in order
            # (the writes are idempotent, and a refused request stored nothing).
            middle = len(batch) // 2
            await self._checkpoints(batch[:middle], lease_ms)
            await self._checkpoints(batch[middle:], lease_ms)
            return
        if response.status_code >= 400:
            step = key.name if len(batch) == 1 else None
            raise self._fail(response, path, key.run_id, step)

    async def fail_step(
        self,
        key: StepKey,
        error: dict[str, Any],
        status: str,
        resume_decision: str,
        span: SpanRef | None,
    ) -> StepWrite:
        body = self._key_body(key)
        body.update(
            error=error,
            status=status,
            resumeDecision=resume_decision,
            traceId=span.trace_id if span else None,
            spanId=span.span_id if span else None,
        )
        return await self._step_write(key, "/steps/failure", body)

    # -- usage and state -------------------------------------------------------------------

    async def record_usage(self, run_id: str, owner: str, record: UsageRecord) -> bool:
        body = {
            "key": record.key,
            "leaseOwner": owner,
            "stepName": record.step_name,
            "kind": record.kind,
            "provider": record.provider,
            "model": record.model,
            "label": record.label,
            "quantity": record.quantity,
            "unit": record.unit,
            "inputTokens": record.input_tokens,
            "outputTokens": record.output_tokens,
            "totalTokens": record.total_tokens,
            "costUsd": record.cost_usd,
            "metadata": record.metadata,
        }
        data = await self._call("POST", self._run_path(run_id, "/usage"), body, run_id=run_id)
        return bool(data.get("inserted"))

    async def write_state(
        self, run_id: str, owner: str | None, value: Any, *, patch: bool, step: str | None
    ) -> dict[str, Any]:
        body = {"value": value, "leaseOwner": owner, "step": step}
        data = await self._call(
            "PATCH" if patch else "PUT",
            self._run_path(run_id, "/state"),
            body,
            run_id=run_id,
            idempotent=False,
        )
        return data["state"]

    async def read_state(self, run_id: str) -> dict[str, Any] | None:
        try:
            data = await self._call("GET", self._run_path(run_id, "/state"), run_id=run_id)
        except RunNotFound:
            return None  # as direct mode: no run, no state
        return data.get("state")

    # -- inspection and operator actions (CLI) --------------------------------------------

    async def list_runs(
        self, *, status: str | None = None, workflow: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        params = {"limit": limit}
        if status:
            params["status"] = status
        if workflow:
            params["workflow"] = workflow
        data = await self._call("GET", "/runs", params=params)
        return [_row(r) for r in data["runs"]]

    async def run_detail(self, run_id: str) -> dict[str, Any]:
        """The run's stored data shaped like direct mode's (snake_case rows), plus the wire
        API's extra collections (gates, edges, state versions, ...)."""
        data = await self._call("GET", self._run_path(run_id), run_id=run_id)
        detail: dict[str, Any] = {}
        for name, value in data.items():
            key = _snake(name)
            if isinstance(value, list):
                detail[key] = [_row(v) if isinstance(v, dict) else v for v in value]
            elif isinstance(value, dict):
                detail[key] = _row(value)
            else:
                detail[key] = value
        for usage in detail.get("usage", []):
            usage["record_key"] = usage.pop("key", None)
        for attempt in detail.get("attempts", []):
            attempt["run_id"] = run_id
        return detail

    async def resolve_step(
        self, run_id: str, step: str, *, retry: bool = False, output: Any = None
    ) -> dict[str, Any]:
        """Operator action for a parked step: allow another execution, or record its output."""
        body: dict[str, Any] = {"name": step, "retry": retry}
        if not retry:
            body["output"] = codec.encode(output, what=f"resolved output of step {step!r}")
        path = self._run_path(run_id, "/steps/resolve")
        response = await self._request("POST", path, body, idempotent=False)
        if response.status_code == 409:
            data = self._decode(response) or {}
            if data.get("code") in ("run_leased", "not_resolvable"):
                raise TidebaseError(data.get("message") or "the step cannot be resolved now")
        if response.status_code >= 400:
            raise self._fail(response, path, run_id, step)
        return self._decode(response)["step"]
