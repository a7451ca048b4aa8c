"""The exceptions Tidebase raises. Each names what was wrong: the run, the step, the field."""

from __future__ import annotations

from typing import Any


class TidebaseError(Exception):
    """Base class of every Tidebase error."""


class ConfigurationError(TidebaseError):
    """The client is configured in a way that cannot work (bad URL, unsupported mode)."""


class StoreUnavailable(TidebaseError):
    """The database or server could not be reached. Retryable: nothing was half-written."""

    retryable = True


class RunNotFound(TidebaseError):
    def __init__(self, run_id: str):
        super().__init__(f"run {run_id!r} not found")
        self.run_id = run_id


class RunLeased(TidebaseError):
    """Another live worker holds the run's lease."""

    def __init__(self, run_id: str, owner: str | None, expires_at: Any):
        super().__init__(
            f"run {run_id!r} is being executed by another worker: lease held by {owner!r} "
            f"until {expires_at}; wait for it to finish or for the lease to expire"
        )
        self.run_id, self.owner, self.expires_at = run_id, owner, expires_at


class LeaseLost(TidebaseError):
    """This worker no longer holds the run lease; it wrote nothing and must stop."""

    def __init__(self, run_id: str, detail: str = ""):
        super().__init__(
            f"lease on run {run_id!r} was lost (another worker took the run over){detail}; "
            "nothing was written"
        )
        self.run_id = run_id


class AttemptEnded(TidebaseError):
    """A step was called on a run attempt that has already ended (its workflow function
    returned or raised): a `run` object kept past `tide.run`, or a step task not awaited."""

    def __init__(self, run_id: str, attempt: int, what: str = "this step"):
        super().__init__(
            f"run {run_id!r}: attempt {attempt} has already ended, so {what} was not "
            "recorded; call run.step inside the workflow function and await every step before "
            "the function returns"
        )
        self.run_id, self.attempt = run_id, attempt


class RunCancelled(TidebaseError):
    def __init__(self, run_id: str, reason: str | None = None):
        super().__init__(f"run {run_id!r} was cancelled" + (f": {reason}" if reason else ""))
        self.run_id, self.reason = run_id, reason


class RunAlreadyCompleted(TidebaseError):
    """A cancel of a run that already completed (cancellation never undoes a result)."""

    def __init__(self, run_id: str):
        super().__init__(f"run {run_id!r} already completed; it cannot be cancelled")
        self.run_id = run_id


class WorkflowMismatch(TidebaseError):
    def __init__(self, run_id: str, stored: str, given: str):
        super().__init__(
            f"run {run_id!r} belongs to workflow {stored!r}, not {given!r}; "
            "a run id can only be resumed by the workflow that created it"
        )


class RunInputMismatch(TidebaseError, ValueError):
    """A run was resumed with an input other than the one it was created with."""

    def __init__(self, run_id: str):
        super().__init__(
            f"run {run_id!r} was created with a different input; resume it with the same input "
            "(or input=None to use the stored one), or start a new run"
        )
        self.run_id = run_id


class InputMismatch(TidebaseError, ValueError):
    """A step name was reused with a different input: replaying would return a stale answer."""

    def __init__(self, step: str, expected: str, actual: str):
        super().__init__(
            f"step {step!r} was recorded with input hash {expected} but is now called with input "
            f"hash {actual}; a changed input needs a new step name (or a new run)"
        )
        self.step, self.expected_hash, self.actual_hash = step, expected, actual


class DuplicateStep(TidebaseError, ValueError):
    def __init__(self, step: str):
        super().__init__(
            f"step {step!r} was already used in this run attempt; step names must be unique "
            "within a run (add a suffix such as an index)"
        )
        self.step = step


class StepNeedsReview(TidebaseError):
    """A step is parked in manual review and will not be re-executed blindly."""

    def __init__(self, run_id: str, step: str, why: str):
        super().__init__(
            f"step {step!r} of run {run_id!r} needs manual review ({why}); resolve it with "
            f"`tidebase runs resolve {run_id} {step} --retry` to run it again, or "
            f"`tidebase runs resolve {run_id} {step} --output JSON` to record its output"
        )
        self.run_id, self.step = run_id, step


class StepFailedPermanently(TidebaseError):
    """A step with replay='never' failed earlier; it is not executed again."""

    def __init__(self, run_id: str, step: str):
        super().__init__(
            f"step {step!r} of run {run_id!r} failed earlier and has replay='never'; resolve it "
            f"with `tidebase runs resolve {run_id} {step} --retry` to allow another execution"
        )
        self.run_id, self.step = run_id, step


class SerializationError(TidebaseError, TypeError):
    """A step's input or output (or a run result) cannot be stored as JSON."""

    def __init__(self, what: str, path: str, type_name: str, hint: str = ""):
        where = f" at {path}" if path else ""
        super().__init__(
            f"{what}: cannot serialize value of type {type_name}{where}"
            + (f" ({hint})" if hint else "")
        )
        self.type_name = type_name
        self.path = path


def describe_number(value: Any) -> str:
    """A number for an error message: a huge integer by its size (printing its digits could
    flood the message, and Python refuses to print beyond 4,300 of them)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 100:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    return repr(value)
