"""Prometheus scraping of tidebase_otel's metrics, without an OpenTelemetry Collector.

Two ways to expose the same data, both fed by one `PrometheusMetricReader`
(``opentelemetry-exporter-prometheus``) per process:

* A worker process serves its own endpoint::

      import tidebase_otel
      from tidebase_otel.prometheus import start_metrics_server

      server = start_metrics_server(port=9464)   # http://127.0.0.1:9464/metrics
      tidebase_otel.instrument()

  or, with no code beyond ``configure()``: ``OTEL_METRICS_EXPORTER=prometheus`` (or
  ``otlp,prometheus`` for both), with ``OTEL_EXPORTER_PROMETHEUS_HOST`` /
  ``OTEL_EXPORTER_PROMETHEUS_PORT`` (default 127.0.0.1:9464); see `tidebase_otel.configure`.
  Under ``opentelemetry-instrument`` with ``opentelemetry-distro`` installed, the same
  variables select the exporter package's own reader and endpoint.

* An ASGI application (for example ``tidebase serve``) mounts `metrics_app()` at ``/metrics``::

      Route("/metrics", metrics_app(), methods=["GET"])

Both serve the registry returned by `registry()`: the OpenTelemetry metrics recorded through
`meter_provider()` (names as Prometheus shows them: ``tidebase_usage_tokens_total``,
``tidebase_usage_cost_USD_total``, ``tidebase_step_duration_seconds_bucket``, ...) plus the
standard ``process_*`` and ``python_*`` collectors of ``prometheus_client``.

A reader serves exactly one MeterProvider, so the provider is created here, once per process
(`meter_provider`). It becomes the global provider when none is set yet; if one is (by your code
or a distro), tidebase_otel never replaces it: pass ``meter_provider()`` to
``tidebase_otel.instrument(meter_provider=...)`` to expose tidebase's metrics.

Prometheus counts what it scraped: increments a process made after its last scrape are lost
when the process dies (SIGKILL, OOM), exactly as unexported OTLP points are. Keep scrape
intervals short for short-lived workers, or export over OTLP to a collector.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics as otel_metrics

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ENV_PROMETHEUS_HOST",
    "ENV_PROMETHEUS_PORT",
    "MetricsApp",
    "MetricsServer",
    "meter_provider",
    "metric_reader",
    "metrics_app",
    "registry",
    "start_metrics_server",
    "start_metrics_server_from_env",
]

_log = logging.getLogger(__name__)

DEFAULT_PORT = 9464  # the port the OpenTelemetry specification gives the Prometheus exporter
DEFAULT_HOST = "127.0.0.1"  # loopback: bind a public address on purpose, never by default
# Standard variables of the OpenTelemetry SDK configuration for the Prometheus exporter.
ENV_PROMETHEUS_HOST = "OTEL_EXPORTER_PROMETHEUS_HOST"
ENV_PROMETHEUS_PORT = "OTEL_EXPORTER_PROMETHEUS_PORT"

_lock = threading.Lock()
_registry: Any = None  # prometheus_client.CollectorRegistry
_reader: Any = None  # PrometheusMetricReader registered in _registry
_provider: Any = None  # the SDK MeterProvider that owns _reader
_servers: dict[tuple[str, int], MetricsServer] = {}


def registry() -> Any:
    """The `prometheus_client.CollectorRegistry` both endpoints serve (created on first use).

    It holds the OpenTelemetry reader's collector and the process, platform and GC collectors.
    Register your own ``prometheus_client`` metrics in it to serve them on the same endpoint.
    """
    global _registry, _reader
    with _lock:
        if _registry is None:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import (
                CollectorRegistry,
                GCCollector,
                PlatformCollector,
                ProcessCollector,
            )

            reg = CollectorRegistry(auto_describe=True)
            try:
                _reader = PrometheusMetricReader(registry=reg)
            except TypeError:
                # opentelemetry-exporter-prometheus before the `registry` argument (2026)
                # registers with prometheus_client's global REGISTRY, which already holds the
                # process collectors.
                from prometheus_client import REGISTRY

                _reader = PrometheusMetricReader()
                _registry = REGISTRY
                return _registry
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)
            GCCollector(registry=reg)
            _registry = reg
        return _registry


def metric_reader() -> Any:
    """The process's `PrometheusMetricReader` (registered in `registry()`).

    A reader can serve one MeterProvider only; `meter_provider()` is that provider.
    """
    registry()
    return _reader


def meter_provider(
    *,
    service_name: str | None = None,
    resource: Any = None,
    readers: Iterable[Any] = (),
    set_global: bool = True,
) -> Any:
    """The SDK MeterProvider whose metrics `registry()` exposes; created on the first call.

    Args:
        service_name: ``service.name`` of a new provider's resource, unless
            ``OTEL_SERVICE_NAME`` is set (ignored when ``resource`` is given).
        resource: the resource of a new provider; default from ``OTEL_SERVICE_NAME`` /
            ``OTEL_RESOURCE_ATTRIBUTES``. Prometheus shows it as ``target_info``.
        readers: further readers of a new provider (for example an OTLP
            ``PeriodicExportingMetricReader``, to export the same metrics both ways).
        set_global: make a new provider the global one if no global provider is set yet.
            A global provider that is already set is never replaced.

    Later calls return the same provider; their arguments are ignored.
    """
    global _provider
    reader = metric_reader()
    with _lock:
        if _provider is not None:
            return _provider
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import Resource

        if resource is None:
            attributes = {}
            if service_name and not os.environ.get("OTEL_SERVICE_NAME"):
                attributes["service.name"] = service_name
            resource = Resource.create(attributes)
        provider = MeterProvider(resource=resource, metric_readers=[*readers, reader])
        _provider = provider
    if set_global:
        if _global_meter_provider_is_set():
            _log.info(
                "tidebase_otel: a MeterProvider is already set; the Prometheus endpoint exposes"
                " tidebase's metrics only if you pass tidebase_otel.prometheus.meter_provider()"
                " to tidebase_otel.instrument(meter_provider=...)"
            )
        else:
            otel_metrics.set_meter_provider(provider)
    return provider


def _global_meter_provider_is_set() -> bool:
    from .sdk import _meter_provider_is_set

    return _meter_provider_is_set()


@dataclass(eq=False)
class MetricsServer:
    """A running ``/metrics`` endpoint (a ``prometheus_client`` HTTP server on a thread)."""

    host: str
    port: int
    meter_provider: Any
    _httpd: Any = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def url(self) -> str:
        """The scrape URL, e.g. ``http://127.0.0.1:9464/metrics``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stops serving and frees the port (the provider and its metrics stay)."""
        with _lock:
            for key, server in list(_servers.items()):
                if server is self:
                    del _servers[key]
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(
    port: int = DEFAULT_PORT, host: str = DEFAULT_HOST, *, service_name: str | None = None
) -> MetricsServer:
    """Serves this process's metrics at ``http://{host}:{port}/metrics`` for Prometheus.

    Creates `meter_provider()` if needed (the global MeterProvider unless one is already set),
    then an HTTP server on a daemon thread. ``port=0`` picks a free port (see ``.port``).
    Calling it again for the same address returns the running server. Raises `OSError` if
    the address is taken.
    """
    provider = meter_provider(service_name=service_name)
    reg = registry()
    with _lock:
        running = _servers.get((host, port)) if port else None
        if running is not None:
            return running
        from prometheus_client import start_http_server

        httpd, thread = start_http_server(port, addr=host, registry=reg)
        bound_port = int(httpd.server_address[1])
        server = MetricsServer(host, bound_port, provider, httpd, thread)
        _servers[(host, bound_port)] = server
    _log.info("tidebase_otel: Prometheus metrics at %s", server.url)
    return server


def start_metrics_server_from_env(*, service_name: str | None = None) -> MetricsServer:
    """`start_metrics_server` on ``OTEL_EXPORTER_PROMETHEUS_HOST`` (default 127.0.0.1) and
    ``OTEL_EXPORTER_PROMETHEUS_PORT`` (default 9464). Raises `ValueError` for a bad port."""
    host = os.environ.get(ENV_PROMETHEUS_HOST, "").strip() or DEFAULT_HOST
    raw_port = os.environ.get(ENV_PROMETHEUS_PORT, "").strip()
    try:
        port = int(raw_port) if raw_port else DEFAULT_PORT
    except ValueError:
        raise ValueError(f"{ENV_PROMETHEUS_PORT} must be a port number, got {raw_port!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{ENV_PROMETHEUS_PORT} must be between 0 and 65535, got {port}")
    return start_metrics_server(port, host, service_name=service_name)


_NOT_INSTALLED = (
    b"Prometheus metrics need opentelemetry-exporter-prometheus: pip install 'tidebase[otel]'\n"
)


class MetricsApp:
    """ASGI application serving `registry()` in the Prometheus exposition format.

    GET and HEAD only. Honours ``Accept`` (OpenMetrics for Prometheus, else text 0.0.4) and
    ``Accept-Encoding: gzip``. Collection runs on a worker thread, so a scrape never blocks the
    event loop. Without the ``tidebase[otel]`` extra it answers 501, saying so. Being a class
    instance (not a function), Starlette's ``Route`` mounts it as an ASGI app as it is.
    """

    def __init__(self, collector_registry: Any = None) -> None:
        self._registry = collector_registry

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise RuntimeError(f"MetricsApp serves HTTP only, not {scope['type']!r}")
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await _respond(send, 405, b"method not allowed\n", "text/plain", {"allow": "GET, HEAD"})
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            from prometheus_client.exposition import choose_encoder

            reg = self._registry if self._registry is not None else registry()
        except ImportError:
            await _respond(send, 501, _NOT_INSTALLED, "text/plain; charset=utf-8", {})
            return
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        body = await asyncio.to_thread(encoder, reg)
        extra: dict[str, str] = {}
        if "gzip" in headers.get("accept-encoding", ""):
            body = gzip.compress(body)
            extra["content-encoding"] = "gzip"
        await _respond(send, 200, body, content_type, extra, head=method == "HEAD")


async def _respond(
    send: Any,
    status: int,
    body: bytes,
    content_type: str,
    extra: dict[str, str],
    *,
    head: bool = False,
) -> None:
    headers = [(b"content-type", content_type.encode("latin-1"))]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
    headers.append((b"content-length", str(len(body)).encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def metrics_app(collector_registry: Any = None) -> MetricsApp:
    """The ASGI app for ``/metrics``: ``Route("/metrics", metrics_app(), methods=["GET"])``.

    Serves `registry()` unless another ``prometheus_client`` registry is given. It does not
    create a MeterProvider: call `meter_provider()` (or `configure()` with
    ``OTEL_METRICS_EXPORTER=prometheus``) in the process for OpenTelemetry metrics to appear.
    """
    return MetricsApp(collector_registry)
