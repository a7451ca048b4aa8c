"""Where runs live: one interface (`Store`), a Postgres implementation and an HTTP one."""

from tidebase.store.base import BeginResult, StepKey, StepRecord, StepWrite, Store, UsageRecord

__all__ = ["BeginResult", "StepKey", "StepRecord", "StepWrite", "Store", "UsageRecord"]
