"""`instrument()` / `uninstrument()`: turn tidebase_otel on and off for the whole process.

Instrumenting registers a `TidebaseObserver` for every `AsyncTidebase` client and, when
``openai-agents`` is importable, an `OTelAgentsProcessor` with the Agents SDK (next to the
processors already registered, which stay). It never sets or replaces a global
TracerProvider or MeterProvider: it uses the ones given, else the global ones (looked up lazily,
so a provider configured after `instrument()`, as ``opentelemetry-instrument`` does, is used).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace

from tidebase.hooks import add_observer, remove_observer

from . import _semconv as sc
from . import queue
from .ledger import AgentsUsageLedger
from .observer import TidebaseObserver
from .prices import PriceSpec, PriceTable

__all__ = ["instrument", "is_instrumented", "uninstrument"]

_log = logging.getLogger(__name__)

_TRUE = frozenset(("1", "true", "yes", "on"))


@dataclass(slots=True)
class _Installed:
    observer: TidebaseObserver
    processor: Any | None  # the OTelAgentsProcessor in use, if openai-agents is importable
    own_processor: bool  # we registered it (else it was the user's: only our listener goes)
    ledger: AgentsUsageLedger | None


_lock = threading.Lock()
_installed: _Installed | None = None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _agents_importable() -> bool:
    try:
        import agents  # noqa: F401
    except ImportError:
        return False
    return True


def _install_agents_processor(
    tracer_provider: otel_trace.TracerProvider | None,
    capture_content: bool | None,
) -> tuple[Any, bool]:
    """Registers our Agents processor, or reuses an OTelAgentsProcessor the user registered."""
    from .agents import OTelAgentsProcessor, _current_processors, install

    for existing in _current_processors() or ():
        if isinstance(existing, OTelAgentsProcessor):
            _log.info(
                "tidebase_otel: an OTelAgentsProcessor is already registered with the Agents SDK;"
                " using it instead of adding a second one"
            )
            return existing, False
    processor = OTelAgentsProcessor(
        tracer_provider=tracer_provider, capture_content=capture_content
    )
    install(processor)
    return processor, True


def instrument(
    tracer_provider: otel_trace.TracerProvider | None = None,
    meter_provider: otel_metrics.MeterProvider | None = None,
    capture_content: bool | None = None,
    record_agents_usage: bool | None = None,
    prices: PriceTable | Mapping[str, PriceSpec] | None = None,
) -> None:
    """Turns on spans and metrics for every tidebase run in this process.

    Args:
        tracer_provider: where spans go; default the global TracerProvider.
        meter_provider: where metrics go; default the global MeterProvider.
        capture_content: record Agents message content (prompts, outputs, tool arguments) on
            spans, size-capped. None: ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``
            (default off).
        record_agents_usage: write every Agents model call's usage to the usage ledger of the
            step that made it (see `tidebase_otel.ledger` for how double counting with records
            made by hand is avoided). None: ``TIDEBASE_OTEL_RECORD_AGENTS_USAGE`` (default off).
        prices: USD per million input/output tokens per model, used for cost when a ledger
            record has no ``cost_usd``; overlays ``TIDEBASE_PRICES``. No prices are built in.

    Calling it again while instrumented logs a warning and changes nothing; call
    `uninstrument()` first to change the settings.
    """
    global _installed
    with _lock:
        if _installed is not None:
            _log.warning("tidebase_otel is already instrumented; call uninstrument() first")
            return
        record = (
            _env_flag(sc.ENV_RECORD_AGENTS_USAGE)
            if record_agents_usage is None
            else bool(record_agents_usage)
        )
        table = PriceTable.resolve(prices)
        processor: Any | None = None
        own = False
        ledger: AgentsUsageLedger | None = None
        if _agents_importable():
            processor, own = _install_agents_processor(tracer_provider, capture_content)
            if record:
                ledger = AgentsUsageLedger(table)
                processor.add_usage_listener(ledger.on_usage)
        elif record:
            _log.warning("tidebase_otel: record_agents_usage needs openai-agents; it is off")
        observer = TidebaseObserver(
            tracer_provider,
            meter_provider,
            prices=table,
            agents_processor=processor,
            agents_usage=ledger,
        )
        add_observer(observer)
        queue.install(tracer_provider, meter_provider)
        _installed = _Installed(observer, processor, own, ledger)


def uninstrument() -> None:
    """Undoes `instrument()`: the observer and our Agents processor are removed (the Agents
    SDK's other processors stay). Spans already started end normally."""
    global _installed
    with _lock:
        installed, _installed = _installed, None
    if installed is None:
        return
    remove_observer(installed.observer)
    queue.uninstall()
    processor = installed.processor
    if processor is None:
        return
    if installed.ledger is not None:
        processor.remove_usage_listener(installed.ledger.on_usage)
    if installed.own_processor:
        from .agents import uninstall

        uninstall(processor)


def is_instrumented() -> bool:
    """Whether `instrument()` is in effect."""
    return _installed is not None


def _current() -> _Installed | None:
    """The installed pieces (for tests and the demo)."""
    return _installed
