"""Tidebase: durable checkpoints for Python AI-agent pipelines, stored in your own Postgres.

from tidebase.aio import AsyncTidebase
"""

from tidebase.aio import AsyncTidebase, RunContext, RunStats, current_run, current_step_name
from tidebase.contract import classify_resume_decision, hash_input
from tidebase.errors import (
    AttemptEnded,
    ConfigurationError,
    DuplicateStep,
    InputMismatch,
    LeaseLost,
    RunAlreadyCompleted,
    RunCancelled,
    RunInputMismatch,
    RunLeased,
    RunNotFound,
    SerializationError,
    StepFailedPermanently,
    StepNeedsReview,
    StoreUnavailable,
    TidebaseError,
    WorkflowMismatch,
)
from tidebase.hooks import RunObserver, add_observer, remove_observer
from tidebase.queues import Enqueued

__all__ = [
    "AsyncTidebase",
    "AttemptEnded",
    "ConfigurationError",
    "DuplicateStep",
    "Enqueued",
    "InputMismatch",
    "LeaseLost",
    "RunAlreadyCompleted",
    "RunCancelled",
    "RunContext",
    "RunInputMismatch",
    "RunLeased",
    "RunNotFound",
    "RunObserver",
    "RunStats",
    "SerializationError",
    "StepFailedPermanently",
    "StepNeedsReview",
    "StoreUnavailable",
    "TidebaseError",
    "WorkflowMismatch",
    "add_observer",
    "classify_resume_decision",
    "current_run",
    "current_step_name",
    "hash_input",
    "remove_observer",
]
__version__ = "0.1.0"
