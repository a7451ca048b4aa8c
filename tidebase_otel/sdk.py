"""`configure()`: set up the OpenTelemetry SDK with OTLP exporters, unless the user already did.

This is the only module of tidebase_otel that uses the OpenTelemetry SDK and exporters (the
``tidebase[otel]`` extra), and it imports them only when called. Instrumentation code uses the
OpenTelemetry API alone.

What `configure` does, per signal (traces, metrics):

* If a global provider is already set (by the user, a distro, another library), it is left
  alone: tidebase_otel never replaces a provider.
* Otherwise it sets an SDK provider with the resource from ``OTEL_SERVICE_NAME`` /
  ``OTEL_RESOURCE_ATTRIBUTES`` (``service_name`` is the default service name) and one OTLP
  exporter behind a `BatchSpanProcessor` (traces) or a `PeriodicExportingMetricReader`
  (metrics), so exporting never happens on the caller's thread.
* The protocol is ``OTEL_EXPORTER_OTLP_{TRACES,METRICS}_PROTOCOL``, else
  ``OTEL_EXPORTER_OTLP_PROTOCOL``, else ``http/protobuf`` (the specification's default);
  ``grpc`` selects the gRPC exporter. ``endpoint`` (a base URL like
  ``OTEL_EXPORTER_OTLP_ENDPOINT``) overrides the environment; without it the exporters read the
  standard variables themselves (endpoints, headers, timeout, certificates, compression), and so
  do the batch processor and the reader (``OTEL_BSP_*``, ``OTEL_METRIC_EXPORT_INTERVAL``) and
  the sampler (``OTEL_TRACES_SAMPLER``).
* ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``: ``otlp`` (default), ``console`` or
  ``none`` (that signal is not configured). ``OTEL_SDK_DISABLED=true`` turns all of it off.
* ``OTEL_METRICS_EXPORTER`` may also name ``prometheus``, alone or in a list with the others
  (``otlp,prometheus``): the metrics are then also served for Prometheus scraping on
  ``OTEL_EXPORTER_PROMETHEUS_HOST``:``OTEL_EXPORTER_PROMETHEUS_PORT`` (default 127.0.0.1:9464;
  see `tidebase_otel.prometheus`). A port that cannot be bound is logged, never raised.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace

__all__ = ["Configured", "configure", "metric_exporter", "span_exporter"]

_log = logging.getLogger(__name__)

_HTTP = "http/protobuf"
_GRPC = "grpc"
_DEFAULT_PROTOCOL = _HTTP  # the OTLP exporter specification's default
_TRUE = frozenset(("1", "true", "yes", "on"))

# Standard variable names (kept here, not in _semconv: they configure the SDK, not telemetry).
_ENV_SDK_DISABLED = "OTEL_SDK_DISABLED"
_ENV_SERVICE_NAME = "OTEL_SERVICE_NAME"
_ENV_PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"
_ENV_SIGNAL_PROTOCOL = {
    "traces": "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "metrics": "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
}
_ENV_EXPORTER = {"traces": "OTEL_TRACES_EXPORTER", "metrics": "OTEL_METRICS_EXPORTER"}
_HTTP_PATH = {"traces": "/v1/traces", "metrics": "/v1/metrics"}
_SERVICE_NAME_KEY = "service.name"


@dataclass(frozen=True, slots=True)
class Configured:
    """What `configure` left in place: the global providers, and which of them it set."""

    tracer_provider: otel_trace.TracerProvider
    meter_provider: otel_metrics.MeterProvider
    traces_configured: bool
    metrics_configured: bool


def _protocol(signal: str) -> str:
    raw = (
        os.environ.get(_ENV_SIGNAL_PROTOCOL[signal]) or os.environ.get(_ENV_PROTOCOL) or ""
    ).strip().lower() or _DEFAULT_PROTOCOL
    if raw not in (_HTTP, _GRPC):
        _log.warning(
            "tidebase_otel: OTLP protocol %r is not supported by the Python exporters; using %s",
            raw,
            _DEFAULT_PROTOCOL,
        )
        return _DEFAULT_PROTOCOL
    return raw


def _signal_endpoint(endpoint: str | None, signal: str, protocol: str) -> str | None:
    if endpoint is None:
        return None
    if protocol == _HTTP:
        return endpoint.rstrip("/") + _HTTP_PATH[signal]
    return endpoint


def span_exporter(endpoint: str | None = None, timeout: float | None = None) -> Any:
    """An OTLP span exporter for the configured protocol (HTTP/protobuf unless ``grpc``);
    `timeout` in seconds, else ``OTEL_EXPORTER_OTLP_TIMEOUT`` (10 s by default)."""
    protocol = _protocol("traces")
    url = _signal_endpoint(endpoint, "traces", protocol)
    if protocol == _GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    return OTLPSpanExporter(endpoint=url, **({"timeout": timeout} if timeout is not None else {}))


def metric_exporter(endpoint: str | None = None, timeout: float | None = None) -> Any:
    """An OTLP metric exporter for the configured protocol (HTTP/protobuf unless ``grpc``);
    `timeout` as for `span_exporter`."""
    protocol = _protocol("metrics")
    url = _signal_endpoint(endpoint, "metrics", protocol)
    if protocol == _GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[assignment]
            OTLPMetricExporter,
        )
    return OTLPMetricExporter(endpoint=url, **({"timeout": timeout} if timeout is not None else {}))


def _exporter_choice(signal: str) -> str:
    raw = os.environ.get(_ENV_EXPORTER[signal], "otlp").strip().lower() or "otlp"
    # A list is allowed by the spec; we honour its first entry.
    choice = raw.split(",")[0].strip()
    if choice not in ("otlp", "console", "none"):
        _log.warning(
            "tidebase_otel: %s=%s is not supported by configure(); using otlp",
            _ENV_EXPORTER[signal],
            raw,
        )
        return "otlp"
    return choice


_METRIC_EXPORTERS = frozenset(("otlp", "console", "prometheus"))


def _metric_exporter_choices() -> list[str]:
    """``OTEL_METRICS_EXPORTER`` as a list: any of otlp, console, prometheus; [] for none."""
    raw = os.environ.get(_ENV_EXPORTER["metrics"], "otlp").strip().lower() or "otlp"
    choices: list[str] = []
    for name in (part.strip() for part in raw.split(",")):
        if name == "none":
            return []
        if name not in _METRIC_EXPORTERS:
            _log.warning(
                "tidebase_otel: %s lists %r, which configure() does not support; ignoring it",
                _ENV_EXPORTER["metrics"],
                name,
            )
        elif name not in choices:
            choices.append(name)
    return choices or ["otlp"]


def _tracer_provider_is_set() -> bool:
    return not isinstance(otel_trace.get_tracer_provider(), otel_trace.ProxyTracerProvider)


def _meter_provider_is_set() -> bool:
    try:
        from opentelemetry.metrics._internal import _ProxyMeterProvider
    except ImportError:  # pragma: no cover - API layout changed
        return type(otel_metrics.get_meter_provider()).__name__ != "_ProxyMeterProvider"
    return not isinstance(otel_metrics.get_meter_provider(), _ProxyMeterProvider)


def configure(service_name: str | None = None, endpoint: str | None = None) -> Configured:
    """Sets global SDK providers exporting over OTLP, for each signal whose provider is unset.

    Args:
        service_name: ``service.name`` of the resource, unless ``OTEL_SERVICE_NAME`` is set.
        endpoint: OTLP base endpoint (e.g. ``http://collector:4318``, or
            ``http://collector:4317`` with ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc``); default the
            ``OTEL_EXPORTER_OTLP_*ENDPOINT`` variables, else the exporters' defaults
            (``http://localhost:4318`` / ``localhost:4317``).

    Returns the providers in effect afterwards and which ones this call set. Call
    `tidebase_otel.instrument()` as well to produce tidebase spans and metrics.
    """
    if os.environ.get(_ENV_SDK_DISABLED, "").strip().lower() in _TRUE:
        return Configured(
            otel_trace.get_tracer_provider(), otel_metrics.get_meter_provider(), False, False
        )
    from opentelemetry.sdk.resources import Resource

    attributes = {}
    if service_name and not os.environ.get(_ENV_SERVICE_NAME):
        attributes[_SERVICE_NAME_KEY] = service_name
    resource = Resource.create(attributes)

    traces = False
    if _tracer_provider_is_set():
        _log.info("tidebase_otel: a TracerProvider is already set; configure() leaves it alone")
    elif (choice := _exporter_choice("traces")) != "none":
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        tracer_provider = TracerProvider(resource=resource)
        exporter = ConsoleSpanExporter() if choice == "console" else span_exporter(endpoint)
        tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        otel_trace.set_tracer_provider(tracer_provider)
        traces = True

    metrics = False
    if _meter_provider_is_set():
        _log.info("tidebase_otel: a MeterProvider is already set; configure() leaves it alone")
    elif choices := _metric_exporter_choices():
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import (
            ConsoleMetricExporter,
            PeriodicExportingMetricReader,
        )

        readers = [
            PeriodicExportingMetricReader(
                ConsoleMetricExporter() if choice == "console" else metric_exporter(endpoint)
            )
            for choice in choices
            if choice != "prometheus"
        ]
        if "prometheus" in choices:
            meter_provider = _prometheus_meter_provider(resource, readers)
        else:
            meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        otel_metrics.set_meter_provider(meter_provider)
        metrics = True

    return Configured(
        otel_trace.get_tracer_provider(), otel_metrics.get_meter_provider(), traces, metrics
    )


def _prometheus_meter_provider(resource: Any, readers: list[Any]) -> Any:
    """The Prometheus-exposed provider (with `readers` too), its endpoint started from the
    ``OTEL_EXPORTER_PROMETHEUS_*`` variables; a failure to serve is logged, not raised."""
    from . import prometheus

    provider = prometheus.meter_provider(resource=resource, readers=readers, set_global=False)
    try:
        prometheus.start_metrics_server_from_env()
    except (OSError, ValueError) as exc:
        _log.warning("tidebase_otel: cannot serve Prometheus metrics: %s", exc)
    return provider
