"""The metric instruments of tidebase_otel, fed from the run/step observer.

Every usage instrument mirrors the usage ledger: tidebase calls
`AttemptTracker.usage_recorded` exactly once per *new* ledger row (a duplicate key, a replayed
step or a re-invoked completed run writes no row and so produces no point), and this module turns
each such call into metric points. Attributes are low in cardinality by construction: workflow,
provider, model, token type, usage kind, outcome, status; never run ids, step ids or step names.

============================== ========= ========== ================================================
instrument                     kind      unit       attributes
============================== ========= ========== ================================================
gen_ai.client.token.usage      histogram {token}    gen_ai.token.type, gen_ai.operation.name,
                                                    gen_ai.provider.name, gen_ai.request.model,
                                                    tidebase.workflow
tidebase.usage.tokens          counter   {token}    tidebase.workflow, gen_ai.provider.name,
                                                    gen_ai.request.model, gen_ai.token.type,
                                                    tidebase.usage.kind
tidebase.usage.cost            counter   USD        tidebase.workflow, gen_ai.provider.name,
                                                    gen_ai.request.model, tidebase.usage.kind
tidebase.steps                 counter   {step}     tidebase.workflow, tidebase.step.outcome
tidebase.step.duration         histogram s          tidebase.workflow, tidebase.step.outcome
tidebase.runs                  counter   {run}      tidebase.workflow, tidebase.run.status
tidebase.replay.tokens_avoided counter   {token}    tidebase.workflow, gen_ai.provider.name,
                                                    gen_ai.request.model, gen_ai.token.type
tidebase.replay.cost_avoided   counter   USD        tidebase.workflow, gen_ai.provider.name,
                                                    gen_ai.request.model
============================== ========= ========== ================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics as otel_metrics

from tidebase.hooks import UsageAmount, UsageInfo

from . import _semconv as sc
from .prices import PriceTable

__all__ = ["AvoidedUsage", "TidebaseMetrics"]


@dataclass(frozen=True, slots=True)
class AvoidedUsage:
    """What a replayed step did not spend again (for the replay span's attributes)."""

    input_tokens: int
    output_tokens: int
    cost_usd: float | None


def _histogram(
    meter: otel_metrics.Meter, name: str, unit: str, description: str, buckets: Sequence[float]
) -> otel_metrics.Histogram:
    try:
        return meter.create_histogram(
            name, unit=unit, description=description, explicit_bucket_boundaries_advisory=buckets
        )
    except TypeError:  # opentelemetry-api older than 1.27: no advisory parameter
        return meter.create_histogram(name, unit=unit, description=description)


class TidebaseMetrics:
    """Creates the instruments once and records into them."""

    def __init__(self, meter: otel_metrics.Meter, prices: PriceTable) -> None:
        self.prices = prices
        self._token_usage = _histogram(
            meter,
            sc.METRIC_GEN_AI_CLIENT_TOKEN_USAGE,
            sc.UNIT_TOKEN,
            "Number of input and output tokens used, per usage ledger record.",
            sc.TOKEN_USAGE_BUCKETS,
        )
        self._tokens = meter.create_counter(
            sc.METRIC_TIDEBASE_TOKENS,
            unit=sc.UNIT_TOKEN,
            description="Tokens recorded in the Tidebase usage ledger.",
        )
        self._cost = meter.create_counter(
            sc.METRIC_TIDEBASE_COST,
            unit=sc.UNIT_USD,
            description="Cost in USD of the usage recorded in the Tidebase usage ledger "
            "(the record's cost_usd, else the configured price table).",
        )
        self._steps = meter.create_counter(
            sc.METRIC_TIDEBASE_STEPS,
            unit=sc.UNIT_STEP,
            description="Steps by outcome: completed, replayed, failed, manual_review, "
            "cancelled, lease_lost, interrupted, and retried (one per retried try).",
        )
        self._step_duration = _histogram(
            meter,
            sc.METRIC_TIDEBASE_STEP_DURATION,
            sc.UNIT_SECONDS,
            "Duration of executed steps, all tries included.",
            sc.STEP_DURATION_BUCKETS,
        )
        self._runs = meter.create_counter(
            sc.METRIC_TIDEBASE_RUNS,
            unit=sc.UNIT_RUN,
            description="Run attempts that ended, by status.",
        )
        self._tokens_avoided = meter.create_counter(
            sc.METRIC_TIDEBASE_REPLAY_TOKENS_AVOIDED,
            unit=sc.UNIT_TOKEN,
            description="Tokens recorded during the original execution of steps that replayed.",
        )
        self._cost_avoided = meter.create_counter(
            sc.METRIC_TIDEBASE_REPLAY_COST_AVOIDED,
            unit=sc.UNIT_USD,
            description="Cost in USD recorded during the original execution of steps that "
            "replayed: money a resume did not spend again.",
        )

    # ------------------------------------------------------------------ usage ledger
    def usage_recorded(self, info: UsageInfo) -> None:
        """One new ledger row: token and cost points (exactly once per row)."""
        provider = info.provider or sc.UNKNOWN_VALUE
        model = info.model or sc.UNKNOWN_VALUE
        base = {
            sc.TIDEBASE_WORKFLOW: info.workflow,
            sc.GEN_AI_PROVIDER_NAME: provider,
            sc.GEN_AI_REQUEST_MODEL: model,
        }
        operation = sc.OPERATION_FOR_USAGE_KIND.get(info.kind, info.kind)
        for token_type, amount in (
            (sc.TOKEN_TYPE_INPUT, info.input_tokens),
            (sc.TOKEN_TYPE_OUTPUT, info.output_tokens),
        ):
            if amount is None:
                continue
            self._token_usage.record(
                amount,
                {
                    **base,
                    sc.GEN_AI_TOKEN_TYPE: token_type,
                    sc.GEN_AI_OPERATION_NAME: operation,
                },
            )
            self._tokens.add(
                amount,
                {**base, sc.GEN_AI_TOKEN_TYPE: token_type, sc.TIDEBASE_USAGE_KIND: info.kind},
            )
        # The ledger's own cost: tidebase asked the observer's usage_cost hook (the price
        # table) before writing a record given without one, so that price is in `info` already.
        if info.cost_usd is not None:
            self._cost.add(float(info.cost_usd), {**base, sc.TIDEBASE_USAGE_KIND: info.kind})

    # ------------------------------------------------------------------ steps and runs
    def step_ended(self, workflow: str, outcome: str, duration_s: float | None) -> None:
        # Called for every step. These two SDK calls are about a third of what tidebase_otel
        # costs per step (~13 us each on the bench machine, a quarter of that for exemplars).
        # Caching this two-entry dict would save nothing (building it costs ~60 ns, like the
        # lookup), and OTel Python has no bound instruments: the SDK copies and hashes the
        # attributes on every call whatever we pass, so this is already the fastest path.
        attrs = {sc.TIDEBASE_WORKFLOW: workflow, sc.TIDEBASE_STEP_OUTCOME: outcome}
        self._steps.add(1, attrs)
        if duration_s is not None:
            self._step_duration.record(max(0.0, duration_s), attrs)

    def steps_ended(
        self, workflow: str, outcomes: Mapping[str, int], durations: Sequence[tuple[str, float]]
    ) -> None:
        """A batch of `step_ended` calls: steps per outcome, (outcome, seconds) per duration."""
        for outcome, count in outcomes.items():
            self._steps.add(
                count, {sc.TIDEBASE_WORKFLOW: workflow, sc.TIDEBASE_STEP_OUTCOME: outcome}
            )
        for outcome, seconds in durations:
            self._step_duration.record(
                max(0.0, seconds),
                {sc.TIDEBASE_WORKFLOW: workflow, sc.TIDEBASE_STEP_OUTCOME: outcome},
            )

    def step_retried(self, workflow: str) -> None:
        self._steps.add(
            1, {sc.TIDEBASE_WORKFLOW: workflow, sc.TIDEBASE_STEP_OUTCOME: sc.OUTCOME_RETRIED}
        )

    def run_ended(self, workflow: str, status: str) -> None:
        self._runs.add(1, {sc.TIDEBASE_WORKFLOW: workflow, sc.TIDEBASE_RUN_STATUS: status})

    def replayed(self, workflow: str, usage: Sequence[UsageAmount]) -> AvoidedUsage:
        """Counts what a replayed step did not spend again; returns the totals."""
        total_in = total_out = 0
        total_cost: float | None = None
        for amount in usage:
            attrs: dict[str, Any] = {
                sc.TIDEBASE_WORKFLOW: workflow,
                sc.GEN_AI_PROVIDER_NAME: amount.provider or sc.UNKNOWN_VALUE,
                sc.GEN_AI_REQUEST_MODEL: amount.model or sc.UNKNOWN_VALUE,
            }
            for token_type, tokens in (
                (sc.TOKEN_TYPE_INPUT, amount.input_tokens),
                (sc.TOKEN_TYPE_OUTPUT, amount.output_tokens),
            ):
                if tokens:
                    self._tokens_avoided.add(tokens, {**attrs, sc.GEN_AI_TOKEN_TYPE: token_type})
            total_in += amount.input_tokens
            total_out += amount.output_tokens
            # The ledger sums cost_usd per (provider, model); where it recorded none, price it.
            cost: float | None = amount.cost_usd or None
            if cost is None:
                cost = self.prices.cost(
                    amount.model, amount.input_tokens, amount.output_tokens, amount.provider
                )
            if cost is not None:
                self._cost_avoided.add(cost, attrs)
                total_cost = (total_cost or 0.0) + cost
        return AvoidedUsage(total_in, total_out, total_cost)
