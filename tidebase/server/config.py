"""Server settings, read from the environment once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass

from tidebase.errors import ConfigurationError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7373


def _env_int(name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigurationError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def _env_flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be 1/0 (or true/false), got {raw!r}")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """How `tidebase serve` runs.

    database_url: Postgres to serve (None: TIDEBASE_DATABASE_URL/DATABASE_URL, else embedded).
    api_key: when set, every route but /health needs `Authorization: Bearer <key>`.
    lease_ms: run and step lease length for clients that do not send one (TIDEBASE_LEASE_MS).
    max_body_bytes: larger request bodies are answered 413 (TIDEBASE_MAX_BODY_BYTES).
    auto_migrate: apply pending migrations at start-up; else refuse to start while any are
        pending (TIDEBASE_AUTO_MIGRATE=0).
    pool_min/pool_max: Postgres connection pool size (TIDEBASE_POOL_MIN/TIDEBASE_POOL_MAX).
    sse_keepalive_s: idle SSE streams get a comment line this often (and re-check the log).
    reconcile_ms: reconciler tick interval, 0 = off (TIDEBASE_RECONCILE_MS, default 5000).
    recovery_throttle_ms: at most one recovery request per stalled run this often
        (TIDEBASE_RECOVERY_THROTTLE_MS, default 30000).
    webhook_secret: signs recovery webhooks (TIDEBASE_WEBHOOK_SECRET); without it they are
        not sent.
    """

    database_url: str | None = None
    api_key: str | None = None
    lease_ms: int = 60_000
    max_body_bytes: int = 16 * 1024 * 1024
    auto_migrate: bool = True
    pool_min: int = 2
    pool_max: int = 10
    sse_keepalive_s: float = 15.0
    reconcile_ms: int = 5000
    recovery_throttle_ms: int = 30_000
    webhook_secret: str | None = None

    @classmethod
    def from_env(cls) -> ServerConfig:
        """Settings from TIDEBASE_* variables (raises ConfigurationError naming a bad one)."""
        from tidebase.embedded import configured_database_url

        pool_min = _env_int("TIDEBASE_POOL_MIN", 2, minimum=1, maximum=1000)
        return cls(
            database_url=configured_database_url(),
            api_key=os.environ.get("TIDEBASE_API_KEY") or None,
            lease_ms=_env_int("TIDEBASE_LEASE_MS", 60_000, minimum=1000, maximum=86_400_000),
            max_body_bytes=_env_int(
                "TIDEBASE_MAX_BODY_BYTES", 16 * 1024 * 1024, minimum=1024, maximum=1 << 30
            ),
            auto_migrate=_env_flag("TIDEBASE_AUTO_MIGRATE", True),
            pool_min=pool_min,
            pool_max=_env_int(
                "TIDEBASE_POOL_MAX", max(10, pool_min), minimum=pool_min, maximum=1000
            ),
            reconcile_ms=_env_int("TIDEBASE_RECONCILE_MS", 5000, minimum=0, maximum=86_400_000),
            recovery_throttle_ms=_env_int(
                "TIDEBASE_RECOVERY_THROTTLE_MS", 30_000, minimum=0, maximum=86_400_000
            ),
            webhook_secret=os.environ.get("TIDEBASE_WEBHOOK_SECRET") or None,
        )
