"""Trace continuation: each request runs in a server span under the caller's W3C trace context.

Uses the OpenTelemetry API only. Until a tracer provider is configured (tidebase_otel or the
OTEL_* setup, checked per request) nothing is done; with one, the request span (and any
instrumented SQL under it) sits under the SDK span that sent the request.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

try:  # the API is a dependency, but keep the server working without it
    from opentelemetry import propagate, trace
    from opentelemetry.trace import (
        NoOpTracerProvider,
        ProxyTracerProvider,
        SpanKind,
        Status,
        StatusCode,
    )

    _UNCONFIGURED: tuple[type, ...] = (ProxyTracerProvider, NoOpTracerProvider)
except ImportError:  # pragma: no cover
    trace = None  # type: ignore[assignment]

_PROPAGATION_HEADERS = (b"traceparent", b"tracestate", b"baggage")


class TracingMiddleware:
    """Starts a SERVER span per HTTP request, continuing the incoming `traceparent`."""

    def __init__(self, app: ASGIApp, tracer_provider: Any = None):
        self.app = app
        self._provider = tracer_provider
        if trace is None:
            self._tracer = None
        elif tracer_provider is not None:
            self._tracer = tracer_provider.get_tracer("tidebase.server")
        else:
            self._tracer = trace.get_tracer("tidebase.server")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self._tracer is None
            or scope["type"] != "http"
            # No SDK configured (yet): spans would be non-recording, skip the bookkeeping.
            or (self._provider is None and isinstance(trace.get_tracer_provider(), _UNCONFIGURED))
        ):
            await self.app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _PROPAGATION_HEADERS
        }
        context = propagate.extract(carrier) if carrier else None
        method = scope["method"]
        status = 0

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        attributes: dict[str, Any] = {"http.request.method": method, "url.path": scope["path"]}
        with self._tracer.start_as_current_span(
            method,
            context=context,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=True,
            set_status_on_exception=True,
        ) as span:
            try:
                await self.app(scope, receive, send_and_record)
            finally:
                if span.is_recording():
                    route = getattr(scope.get("route"), "path", None)
                    if route:
                        span.update_name(f"{method} {route}")
                        span.set_attribute("http.route", route)
                    if status:
                        span.set_attribute("http.response.status_code", status)
                        if status >= 500:
                            span.set_status(Status(StatusCode.ERROR))
