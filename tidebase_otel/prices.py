"""A user-configured price table: what a model's tokens cost, in USD per million tokens.

Tidebase ships no prices: they change, differ per contract and per provider, and a wrong
built-in price is worse than none. A cost metric is produced from a ledger record's own
``cost_usd`` when it has one, else from this table when the record's model is in it, else not
at all (tokens are still counted).

Configure it in code::

    tidebase_otel.instrument(prices={"gpt-4.1-mini": (0.40, 1.60)})

or with the ``TIDEBASE_PRICES`` environment variable (JSON, same shapes)::

    TIDEBASE_PRICES='{"gpt-4.1-mini": {"input": 0.40, "output": 1.60}}'

Keys are model names, or ``provider/model`` to price one provider's model differently; the
``provider/model`` entry wins over a bare model entry. Prices given in code win over the
environment, model by model. Cached-input discounts are not modelled: every input token is
priced at the input price.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from . import _semconv as sc

__all__ = ["ModelPrice", "PriceSpec", "PriceTable"]

_log = logging.getLogger(__name__)

_PER_MILLION = 1_000_000


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per million input tokens and per million output tokens."""

    input_per_million: float
    output_per_million: float

    def __post_init__(self) -> None:
        for name in ("input_per_million", "output_per_million"):
            value = getattr(self, name)
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (
            input_tokens * self.input_per_million + output_tokens * self.output_per_million
        ) / _PER_MILLION


_LEDGER_DECIMALS = 10  # usage_records.cost_usd is numeric(20,10)

PriceSpec: TypeAlias = ModelPrice | tuple[float, float] | list[float] | Mapping[str, float]
"""One model's price: a `ModelPrice`, an ``(input, output)`` pair or ``{"input", "output"}``."""


def _as_price(model: str, spec: Any) -> ModelPrice:
    if isinstance(spec, ModelPrice):
        return spec
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"input", "output"}
        if unknown or not {"input", "output"} <= set(spec):
            raise ValueError(
                f"price of {model!r} must have exactly the keys 'input' and 'output' "
                f"(USD per million tokens), got {sorted(spec)}"
            )
        return ModelPrice(spec["input"], spec["output"])
    if isinstance(spec, tuple | list) and len(spec) == 2:
        return ModelPrice(spec[0], spec[1])
    raise ValueError(
        f"price of {model!r} must be (input, output) USD per million tokens or "
        f'{{"input": ..., "output": ...}}, got {spec!r}'
    )


class PriceTable:
    """Model prices in USD per million tokens; empty unless the user configures it."""

    __slots__ = ("_prices",)

    def __init__(self, prices: Mapping[str, PriceSpec] | None = None) -> None:
        table: dict[str, ModelPrice] = {}
        for model, spec in (prices or {}).items():
            if not isinstance(model, str) or not model:
                raise ValueError(f"price table keys must be model names, got {model!r}")
            table[model] = _as_price(model, spec)
        self._prices = table

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PriceTable:
        """The table in ``TIDEBASE_PRICES``; an invalid value is logged and ignored."""
        raw = (os.environ if environ is None else environ).get(sc.ENV_PRICES, "").strip()
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object of model -> price")
            return cls(data)
        except ValueError as exc:
            _log.warning("tidebase_otel: ignoring %s: %s", sc.ENV_PRICES, exc)
            return cls()

    @classmethod
    def resolve(cls, prices: PriceTable | Mapping[str, PriceSpec] | None) -> PriceTable:
        """The environment's table overlaid with ``prices`` (code wins, model by model)."""
        table = cls.from_env()
        if prices is None:
            return table
        given = prices if isinstance(prices, PriceTable) else cls(prices)
        return cls({**table._prices, **given._prices})

    def __len__(self) -> int:
        return len(self._prices)

    def __contains__(self, model: object) -> bool:
        return model in self._prices

    def price(self, model: str | None, provider: str | None = None) -> ModelPrice | None:
        if not model:
            return None
        if provider:
            found = self._prices.get(f"{provider}/{model}")
            if found is not None:
                return found
        return self._prices.get(model)

    def cost(
        self,
        model: str | None,
        input_tokens: int | None,
        output_tokens: int | None,
        provider: str | None = None,
    ) -> float | None:
        """USD for these tokens, or None when the model has no price or there are no tokens.

        Rounded to 10 decimal places, the ledger's `cost_usd` precision: a cost stored in the
        ledger and the cost metric's point for it are the same number."""
        if input_tokens is None and output_tokens is None:
            return None
        price = self.price(model, provider)
        if price is None:
            return None
        return round(price.cost(input_tokens or 0, output_tokens or 0), _LEDGER_DECIMALS)
