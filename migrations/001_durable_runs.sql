-- Durable runs: runs, attempts, steps (checkpoints), the per-run event log, state, usage.
-- Column names follow the Tidebase HTTP API (snake_case here, camelCase on the wire).

CREATE TABLE runs (
    id                  text PRIMARY KEY,
    workflow_name       text NOT NULL,
    input               jsonb NOT NULL DEFAULT '{}'::jsonb,
    metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
    status              text NOT NULL DEFAULT 'pending',
    result              jsonb,
    error               jsonb,
    recovery_webhook    text,
    lease_owner         text,
    lease_expires_at    timestamptz,
    attempt             integer NOT NULL DEFAULT 0,
    queue               text,
    dedupe_key          text,
    priority            integer NOT NULL DEFAULT 0,
    run_at              timestamptz,
    max_attempts        integer NOT NULL DEFAULT 1,
    deadline_at         timestamptz,
    cancel_requested_at timestamptz,
    cancelled_at        timestamptz,
    cancel_reason       text,
    cancel_actor        text,
    failure_class       text,
    event_seq           bigint NOT NULL DEFAULT 0,   -- last seq handed out in events
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    completed_at        timestamptz
);
CREATE INDEX runs_created_at_idx ON runs (created_at DESC);
CREATE INDEX runs_status_idx ON runs (status);

-- One row per attempt (each begin): who ran it and the trace its run span lives in.
CREATE TABLE run_attempts (
    run_id       text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    lease_owner  text NOT NULL,
    trace_id     text,
    span_id      text,
    status       text NOT NULL DEFAULT 'running',
    error        jsonb,
    started_at   timestamptz NOT NULL DEFAULT now(),
    ended_at     timestamptz,
    PRIMARY KEY (run_id, attempt)
);

CREATE TABLE steps (
    id               text PRIMARY KEY,
    run_id           text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name             text NOT NULL,
    parent_name      text,
    input_hash       text NOT NULL,
    input            jsonb,
    options          jsonb NOT NULL DEFAULT '{}'::jsonb,
    status           text NOT NULL,
    output           jsonb,
    error            jsonb,
    resume_decision  text,
    lease_owner      text,
    lease_expires_at timestamptz,
    attempt          integer NOT NULL DEFAULT 0,
    run_attempt      integer,            -- the run attempt that last wrote this step
    trace_id         text,               -- span context of the execution that wrote the output
    span_id          text,
    started_at       timestamptz,
    completed_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (run_id, name)
);

-- Per-run log; seq is handed out from runs.event_seq under the run row lock: gap-free.
CREATE TABLE events (
    id          text PRIMARY KEY DEFAULT ('evt_' || replace(gen_random_uuid()::text, '-', '')),
    run_id      text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq         bigint NOT NULL,
    type        text NOT NULL,
    payload     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (run_id, seq)
);

CREATE TABLE run_state (
    run_id      text PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    value       jsonb NOT NULL,
    version     integer NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE state_versions (
    id          text PRIMARY KEY DEFAULT ('ver_' || replace(gen_random_uuid()::text, '-', '')),
    run_id      text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    stream      text NOT NULL DEFAULT 'run',
    step_id     text,
    version     integer NOT NULL,
    value       jsonb NOT NULL,
    patch       jsonb,
    label       text,
    reason      text,
    importance  text NOT NULL DEFAULT 'normal',
    metadata    jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_by  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (run_id, stream, version)
);

CREATE TABLE usage_records (
    id             text PRIMARY KEY DEFAULT ('use_' || replace(gen_random_uuid()::text, '-', '')),
    run_id         text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step_id        text,
    step_name      text,
    record_key     text NOT NULL,       -- deterministic per record within the run: idempotency
    kind           text NOT NULL DEFAULT 'custom',
    provider       text,
    model          text,
    label          text,
    quantity       double precision,
    unit           text,
    input_tokens   bigint,
    output_tokens  bigint,
    total_tokens   bigint,
    cost_usd       numeric(20, 10),
    metadata       jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (run_id, record_key)
);
CREATE INDEX usage_records_step_idx ON usage_records (run_id, step_name);
