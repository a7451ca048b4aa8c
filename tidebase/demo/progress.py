"""A RunObserver that narrates a run as it happens: attempts, executed and replayed steps."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TextIO

from tidebase.hooks import (
    AttemptInfo,
    AttemptTracker,
    ReplayInfo,
    RunObserver,
    StepInfo,
    StepTracker,
    UsageInfo,
)


class _StepNarrator(StepTracker):
    def __init__(self, out: TextIO, prefix: str, info: StepInfo):
        self._out, self._prefix, self._info = out, prefix, info

    @contextlib.contextmanager
    def running(self, try_number: int) -> Iterator[None]:
        depth = "  " if self._info.parent else ""
        print(f"{self._prefix}{depth}▶ {self._info.name}: executing", file=self._out, flush=True)
        yield

    def finished(self, outcome: str, **kwargs: object) -> None:
        depth = "  " if self._info.parent else ""
        duration = kwargs.get("duration_s") or 0.0
        print(
            f"{self._prefix}{depth}✔ {self._info.name}: {outcome} ({duration * 1000:.0f} ms)"
            if outcome == "completed"
            else f"{self._prefix}{depth}✘ {self._info.name}: {outcome}",
            file=self._out,
            flush=True,
        )


class _AttemptNarrator(AttemptTracker):
    def __init__(self, out: TextIO, prefix: str):
        self._out, self._prefix = out, prefix

    def begun(self, info: AttemptInfo) -> None:
        print(
            f"{self._prefix}run {info.run_id}: attempt {info.attempt} holds the lease",
            file=self._out,
            flush=True,
        )

    def step(self, info: StepInfo) -> StepTracker:
        return _StepNarrator(self._out, self._prefix, info)

    def replayed(self, info: ReplayInfo) -> None:
        tokens = sum(u.input_tokens + u.output_tokens for u in info.usage)
        saved = f", {tokens} tokens not spent again" if tokens else ""
        print(
            f"{self._prefix}↺ {info.step.name}: replayed from its checkpoint{saved}",
            file=self._out,
            flush=True,
        )

    def usage_recorded(self, info: UsageInfo) -> None:
        print(
            f"{self._prefix}  $ usage recorded for {info.step or 'the run'}: "
            f"{info.input_tokens} in / {info.output_tokens} out tokens ({info.model})",
            file=self._out,
            flush=True,
        )


class ProgressObserver(RunObserver):
    """Prints each step of each attempt to `out` (stdout by default)."""

    def __init__(self, out: TextIO | None = None, prefix: str = "  "):
        self._out = out or sys.stdout
        self._prefix = prefix

    def attempt(self, info: AttemptInfo) -> AttemptTracker:
        return _AttemptNarrator(self._out, self._prefix)
