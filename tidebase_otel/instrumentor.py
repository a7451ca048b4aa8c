"""`TidebaseInstrumentor`: the `BaseInstrumentor` behind ``opentelemetry-instrument``.

Registered under the ``opentelemetry_instrumentor`` entry point as ``tidebase``, so
``opentelemetry-instrument python app.py`` turns tidebase_otel on (disable it with
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=tidebase``). It is a thin front for
`tidebase_otel.instrument` / `tidebase_otel.uninstrument`, and shares their state: whichever is
used, the process is instrumented once. Settings come from keyword arguments (the same as
`instrument`'s) or, under ``opentelemetry-instrument``, from the environment:
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``, ``TIDEBASE_OTEL_RECORD_AGENTS_USAGE``,
``TIDEBASE_PRICES``.

Needs the ``opentelemetry-instrumentation`` package (the ``tidebase[otel]`` extra).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

from .instrumentation import instrument, is_instrumented, uninstrument

__all__ = ["TidebaseInstrumentor"]

_INSTRUMENTS = ("tidebase >= 0.1",)
_OPTIONS = ("tracer_provider", "meter_provider", "capture_content", "record_agents_usage", "prices")


class TidebaseInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Instruments tidebase runs and steps (and the Agents SDK, when importable)."""

    # BaseInstrumentor keeps its own flag; ours is the single source of truth, so mixing
    # `TidebaseInstrumentor().instrument()` with `tidebase_otel.uninstrument()` stays coherent.
    @property  # type: ignore[override]
    def _is_instrumented_by_opentelemetry(self) -> bool:
        return is_instrumented()

    @_is_instrumented_by_opentelemetry.setter
    def _is_instrumented_by_opentelemetry(self, value: bool) -> None:
        pass

    def instrumentation_dependencies(self) -> Collection[str]:
        return _INSTRUMENTS

    def _instrument(self, **kwargs: Any) -> None:
        instrument(**{k: v for k, v in kwargs.items() if k in _OPTIONS})

    def _uninstrument(self, **kwargs: Any) -> None:
        uninstrument()
