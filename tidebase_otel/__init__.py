"""OpenTelemetry for Tidebase: spans for runs and steps, Agents SDK traces, usage metrics.

One line turns it on for every run in the process::

    import tidebase_otel
    tidebase_otel.configure(service_name="my-pipeline")  # optional: SDK + OTLP exporters
    tidebase_otel.instrument()

or run the program under ``opentelemetry-instrument`` (entry point ``tidebase``). See
the README's "Telemetry" section for every span, attribute and metric.

Instrumentation uses the OpenTelemetry API only; `configure` (and `TidebaseInstrumentor`,
imported lazily) need the ``tidebase[otel]`` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .instrumentation import instrument, is_instrumented, uninstrument
from .ledger import AgentsUsageLedger
from .observer import TidebaseObserver
from .prices import ModelPrice, PriceSpec, PriceTable
from .sdk import Configured, configure

if TYPE_CHECKING:
    from .agents import AgentsUsage, OTelAgentsProcessor
    from .instrumentor import TidebaseInstrumentor

__all__ = [
    "AgentsUsage",
    "AgentsUsageLedger",
    "Configured",
    "ModelPrice",
    "OTelAgentsProcessor",
    "PriceSpec",
    "PriceTable",
    "TidebaseInstrumentor",
    "TidebaseObserver",
    "configure",
    "instrument",
    "is_instrumented",
    "uninstrument",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: they need optional packages (openai-agents for the Agents
    # processor, opentelemetry-instrumentation for the instrumentor).
    if name in ("AgentsUsage", "OTelAgentsProcessor"):
        from . import agents

        return getattr(agents, name)
    if name == "TidebaseInstrumentor":
        from .instrumentor import TidebaseInstrumentor

        return TidebaseInstrumentor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
