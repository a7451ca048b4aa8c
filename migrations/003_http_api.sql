-- The HTTP API (`tidebase serve`): the tables the wire API has beyond the checkpoint protocol
-- (gates, run edges, notification channels and their deliveries, state streams) and one function
-- per wire operation, so each request is one round trip and one transaction: a request that is
-- rejected changes nothing.
--
-- JSON returned here is the wire shape (camelCase, ISO-8601 UTC timestamps), so the server passes
-- it through. SQLSTATEs as in 002: TB404 run not found, TB409 lease lost, TB410 run cancelled,
-- TB422 input mismatch; TB400 for a request the database refuses as invalid.

-- ---------------------------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------------------------

-- Human approval points. Resolved exactly once: the resolve is a single conditional update.
CREATE TABLE gates (
    id               text PRIMARY KEY DEFAULT ('gate_' || replace(gen_random_uuid()::text, '-', '')),
    run_id           text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name             text NOT NULL,
    prompt           text NOT NULL,
    data             jsonb NOT NULL DEFAULT '{}'::jsonb,
    status           text NOT NULL DEFAULT 'pending',
    decision         text,
    actor            text,
    decision_payload jsonb,
    capability       jsonb,
    channels         jsonb NOT NULL DEFAULT '[]'::jsonb,
    -- two v4 UUIDs: 244 random bits
    resolve_token    text NOT NULL DEFAULT (replace(gen_random_uuid()::text, '-', '')
                                            || replace(gen_random_uuid()::text, '-', '')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    resolved_at      timestamptz,
    UNIQUE (run_id, name)
);

-- Parent/child runs (fan-out). One edge per (parent, name): creating a child is idempotent.
CREATE TABLE run_edges (
    id             text PRIMARY KEY DEFAULT ('edge_' || replace(gen_random_uuid()::text, '-', '')),
    parent_run_id  text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    child_run_id   text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name           text NOT NULL,
    edge_type      text NOT NULL DEFAULT 'child',
    metadata       jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (parent_run_id, name)
);
CREATE INDEX run_edges_child_idx ON run_edges (child_run_id);

-- Webhook channels attached to a run: which event types it wants (empty = all).
CREATE TABLE channels (
    id          text PRIMARY KEY DEFAULT ('chan_' || replace(gen_random_uuid()::text, '-', '')),
    run_id      text REFERENCES runs (id) ON DELETE CASCADE,
    type        text NOT NULL,
    config      jsonb NOT NULL DEFAULT '{}'::jsonb,   -- {url, secret}
    events      jsonb NOT NULL DEFAULT '[]'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX channels_run_idx ON channels (run_id);

-- One row per (event, matching channel), written in the transaction of the event. Each row carries
-- the url/secret it is for, so a sender needs nothing else; status stays 'pending' until sent.
CREATE TABLE channel_deliveries (
    id             text PRIMARY KEY DEFAULT ('del_' || replace(gen_random_uuid()::text, '-', '')),
    run_id         text REFERENCES runs (id) ON DELETE CASCADE,
    channel_id     text,
    gate_id        text,
    event_type     text NOT NULL,
    payload        jsonb NOT NULL DEFAULT '{}'::jsonb,
    url            text NOT NULL,
    secret         text,
    status         text NOT NULL DEFAULT 'pending',
    http_status    integer,
    response_body  text,
    error_text     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    completed_at   timestamptz
);
CREATE INDEX channel_deliveries_run_idx ON channel_deliveries (run_id, created_at DESC);
CREATE INDEX channel_deliveries_pending_idx ON channel_deliveries (created_at)
    WHERE status = 'pending';

-- Named state streams of a run ('run' is the default one; snapshots use '<type>:<id>').
-- Maintained by a trigger on state_versions, so direct-mode writes keep it current too.
CREATE TABLE state_streams (
    id              text PRIMARY KEY DEFAULT ('stream_' || replace(gen_random_uuid()::text, '-', '')),
    run_id          text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name            text NOT NULL,
    target_type     text NOT NULL DEFAULT 'run',
    target_id       text,
    current_version integer NOT NULL DEFAULT 0,
    current_value   jsonb,
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (run_id, name)
);

ALTER TABLE state_versions ADD COLUMN stream_id text;

INSERT INTO state_streams (run_id, name, target_id, current_version, current_value)
SELECT DISTINCT ON (run_id, stream) run_id, stream, run_id, version, value
  FROM state_versions ORDER BY run_id, stream, version DESC;
UPDATE state_versions v SET stream_id = s.id
  FROM state_streams s WHERE s.run_id = v.run_id AND s.name = v.stream;

CREATE FUNCTION tidebase_state_version_stream() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO state_streams (run_id, name, target_id, current_version, current_value)
    VALUES (NEW.run_id, NEW.stream, NEW.run_id, NEW.version, NEW.value)
    ON CONFLICT (run_id, name) DO UPDATE
       SET current_version = EXCLUDED.current_version, current_value = EXCLUDED.current_value,
           updated_at = now()
    RETURNING id INTO NEW.stream_id;
    RETURN NEW;
END $$;

CREATE TRIGGER state_versions_stream BEFORE INSERT ON state_versions
    FOR EACH ROW EXECUTE FUNCTION tidebase_state_version_stream();

-- Keyset paging of the run list: newest first, ties broken by id.
CREATE INDEX runs_created_at_id_idx ON runs (created_at DESC, id DESC);

-- ---------------------------------------------------------------------------------------------
-- Wire shapes
-- ---------------------------------------------------------------------------------------------

CREATE FUNCTION tidebase_iso(p_ts timestamptz) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT to_char(p_ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

CREATE FUNCTION tidebase_wire_run(r runs) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', r.id, 'workflowName', r.workflow_name, 'input', r.input, 'metadata', r.metadata,
        'status', r.status, 'result', r.result, 'error', r.error,
        'recoveryWebhook', r.recovery_webhook, 'leaseOwner', r.lease_owner,
        'leaseExpiresAt', tidebase_iso(r.lease_expires_at), 'attempt', r.attempt,
        'queue', r.queue, 'dedupeKey', r.dedupe_key, 'priority', r.priority,
        'runAt', tidebase_iso(r.run_at), 'maxAttempts', r.max_attempts,
        'deadlineAt', tidebase_iso(r.deadline_at),
        'cancelRequestedAt', tidebase_iso(r.cancel_requested_at),
        'cancelledAt', tidebase_iso(r.cancelled_at), 'cancelReason', r.cancel_reason,
        'cancelActor', r.cancel_actor, 'failureClass', r.failure_class,
        'createdAt', tidebase_iso(r.created_at), 'updatedAt', tidebase_iso(r.updated_at),
        'completedAt', tidebase_iso(r.completed_at))
$$;

-- The resume contract a client reads from a step's stored options (reference semantics,
-- including the legacy `sideEffect` / `onAmbiguousFailure` fields).
CREATE FUNCTION tidebase_wire_resume_contract(p_options jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    o jsonb := CASE WHEN jsonb_typeof(p_options) = 'object' THEN p_options ELSE '{}'::jsonb END;
    v_effects jsonb;
    v_has_key boolean := jsonb_typeof(o -> 'idempotencyKey') = 'string';
    v_replay text;
BEGIN
    IF jsonb_typeof(o -> 'sideEffects') = 'array' THEN
        SELECT COALESCE(jsonb_agg(e ORDER BY n), '[]'::jsonb) INTO v_effects
          FROM jsonb_array_elements(o -> 'sideEffects') WITH ORDINALITY AS x(e, n)
         WHERE jsonb_typeof(e) = 'string' AND e #>> '{}' <> '';
    ELSIF jsonb_typeof(o -> 'sideEffect') = 'string' AND o ->> 'sideEffect' <> 'none' THEN
        v_effects := jsonb_build_array(o -> 'sideEffect');
    ELSE
        v_effects := '[]'::jsonb;
    END IF;
    v_replay := CASE
        WHEN jsonb_typeof(o -> 'replay') = 'string' AND o ->> 'replay' IN ('auto', 'manual', 'never')
            THEN o ->> 'replay'
        WHEN o -> 'onAmbiguousFailure' = '"retry"' THEN 'auto'
        WHEN o -> 'onAmbiguousFailure' = '"review"' THEN 'manual'
        WHEN o -> 'onAmbiguousFailure' = '"fail"' THEN 'never'
        WHEN NOT EXISTS (SELECT 1 FROM jsonb_array_elements_text(v_effects) e WHERE e <> 'read')
            THEN 'auto'
        WHEN v_has_key THEN 'auto'
        ELSE 'manual' END;
    RETURN jsonb_build_object(
        'sideEffects', v_effects,
        'idempotencyKey', CASE WHEN v_has_key THEN o -> 'idempotencyKey' END,
        'replay', v_replay,
        'checkpointInvariant', o -> 'checkpointInvariant',
        'verifiedBy', o -> 'verifiedBy',
        'credentials', CASE WHEN jsonb_typeof(o -> 'credentials') = 'array'
                            THEN o -> 'credentials' ELSE '[]'::jsonb END);
END $$;

CREATE FUNCTION tidebase_wire_step(s steps) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', s.id, 'runId', s.run_id, 'name', s.name, 'inputHash', s.input_hash,
        'input', s.input, 'options', s.options,
        'resumeContract', tidebase_wire_resume_contract(s.options),
        'status', s.status, 'output', s.output, 'error', s.error,
        'leaseOwner', s.lease_owner, 'leaseExpiresAt', tidebase_iso(s.lease_expires_at),
        'attempt', s.attempt, 'startedAt', tidebase_iso(s.started_at),
        'completedAt', tidebase_iso(s.completed_at), 'createdAt', tidebase_iso(s.created_at),
        'updatedAt', tidebase_iso(s.updated_at),
        -- extensions
        'parentName', s.parent_name, 'resumeDecision', s.resume_decision,
        'runAttempt', s.run_attempt, 'traceId', s.trace_id, 'spanId', s.span_id)
$$;

CREATE FUNCTION tidebase_wire_gate(g gates) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', g.id, 'runId', g.run_id, 'name', g.name, 'prompt', g.prompt, 'data', g.data,
        'status', g.status, 'decision', g.decision, 'actor', g.actor,
        'decisionPayload', g.decision_payload, 'capability', g.capability,
        'channels', g.channels, 'resolveToken', g.resolve_token,
        'createdAt', tidebase_iso(g.created_at), 'updatedAt', tidebase_iso(g.updated_at),
        'resolvedAt', tidebase_iso(g.resolved_at))
$$;

CREATE FUNCTION tidebase_wire_state(s run_state) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('runId', s.run_id, 'value', s.value, 'version', s.version,
                              'updatedAt', tidebase_iso(s.updated_at))
$$;

CREATE FUNCTION tidebase_wire_state_version(v state_versions) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', v.id, 'streamId', v.stream_id, 'runId', v.run_id, 'stepId', v.step_id,
        'version', v.version, 'value', v.value, 'patch', v.patch, 'label', v.label,
        'reason', v.reason, 'importance', v.importance, 'metadata', v.metadata,
        'createdBy', v.created_by, 'createdAt', tidebase_iso(v.created_at),
        'stream', v.stream)
$$;

-- The short form of a state version that goes into event payloads.
CREATE FUNCTION tidebase_wire_state_version_ref(v state_versions) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', v.id, 'streamId', v.stream_id, 'runId', v.run_id, 'version', v.version,
        'label', v.label, 'reason', v.reason, 'importance', v.importance,
        'createdAt', tidebase_iso(v.created_at))
$$;

CREATE FUNCTION tidebase_wire_stream(s state_streams) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', s.id, 'runId', s.run_id, 'name', s.name, 'targetType', s.target_type,
        'targetId', s.target_id, 'currentVersion', s.current_version,
        'currentValue', s.current_value, 'metadata', s.metadata,
        'createdAt', tidebase_iso(s.created_at), 'updatedAt', tidebase_iso(s.updated_at))
$$;

CREATE FUNCTION tidebase_wire_usage(u usage_records) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', u.id, 'runId', u.run_id, 'stepId', u.step_id, 'kind', u.kind,
        'provider', u.provider, 'model', u.model, 'label', u.label, 'quantity', u.quantity,
        'unit', u.unit, 'inputTokens', u.input_tokens, 'outputTokens', u.output_tokens,
        'totalTokens', u.total_tokens, 'costUsd', u.cost_usd::double precision,
        'metadata', u.metadata, 'createdAt', tidebase_iso(u.created_at),
        -- extensions
        'stepName', u.step_name, 'key', u.record_key)
$$;

CREATE FUNCTION tidebase_wire_event(e events) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('id', e.id, 'runId', e.run_id, 'seq', e.seq, 'type', e.type,
                              'payload', e.payload, 'createdAt', tidebase_iso(e.created_at))
$$;

CREATE FUNCTION tidebase_wire_edge(e run_edges) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('id', e.id, 'parentRunId', e.parent_run_id,
                              'childRunId', e.child_run_id, 'name', e.name,
                              'edgeType', e.edge_type, 'metadata', e.metadata,
                              'createdAt', tidebase_iso(e.created_at))
$$;

CREATE FUNCTION tidebase_wire_channel(c channels) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('id', c.id, 'runId', c.run_id, 'type', c.type,
                              'config', jsonb_build_object('url', c.config -> 'url',
                                                           'secret', c.config -> 'secret'),
                              'events', c.events, 'createdAt', tidebase_iso(c.created_at))
$$;

CREATE FUNCTION tidebase_wire_delivery(d channel_deliveries) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('id', d.id, 'runId', d.run_id, 'channelId', d.channel_id,
                              'gateId', d.gate_id, 'eventType', d.event_type,
                              'payload', d.payload, 'status', d.status,
                              'httpStatus', d.http_status, 'responseBody', d.response_body,
                              'errorText', d.error_text, 'createdAt', tidebase_iso(d.created_at),
                              'completedAt', tidebase_iso(d.completed_at))
$$;

-- ---------------------------------------------------------------------------------------------
-- Helpers
-- ---------------------------------------------------------------------------------------------

-- Locks a run row (serializing every write to the run and its event log) or raises TB404.
CREATE FUNCTION tidebase_lock_run(p_run_id text) RETURNS runs LANGUAGE plpgsql AS $$
DECLARE
    r runs;
BEGIN
    SELECT * INTO r FROM runs WHERE id = p_run_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % not found', p_run_id USING ERRCODE = 'TB404';
    END IF;
    RETURN r;
END $$;

CREATE FUNCTION tidebase_add_channels(p_run_id text, p_channels jsonb) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO channels (run_id, type, config, events)
    SELECT p_run_id, c ->> 'type',
           jsonb_build_object('url', c -> 'url', 'secret', COALESCE(c -> 'secret', 'null'::jsonb)),
           COALESCE(c -> 'events', '[]'::jsonb)
      FROM jsonb_array_elements(COALESCE(p_channels, '[]'::jsonb)) WITH ORDINALITY AS x(c, n)
     ORDER BY n
$$;

CREATE FUNCTION tidebase_channel_summary(p_channels jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT COALESCE(jsonb_agg(jsonb_build_object('type', c -> 'type', 'url', c -> 'url',
                                                 'events', COALESCE(c -> 'events', '[]'::jsonb))
                              ORDER BY n), '[]'::jsonb)
      FROM jsonb_array_elements(COALESCE(p_channels, '[]'::jsonb)) WITH ORDINALITY AS x(c, n)
$$;

-- Records a pending delivery for every channel of the run (plus a gate's inline channels) that
-- wants this event type.
CREATE FUNCTION tidebase_queue_deliveries(
    p_run_id text, p_event_type text, p_payload jsonb, p_inline jsonb, p_gate_id text)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO channel_deliveries (run_id, channel_id, gate_id, event_type, payload, url, secret)
    SELECT p_run_id, c.id, p_gate_id, p_event_type, COALESCE(p_payload, '{}'::jsonb),
           c.config ->> 'url', c.config ->> 'secret'
      FROM channels c
     WHERE c.run_id = p_run_id AND c.type = 'webhook'
       AND (jsonb_array_length(c.events) = 0 OR c.events ? p_event_type)
    UNION ALL
    SELECT p_run_id, NULL, p_gate_id, p_event_type, COALESCE(p_payload, '{}'::jsonb),
           i ->> 'url', i ->> 'secret'
      FROM jsonb_array_elements(COALESCE(p_inline, '[]'::jsonb)) AS i
     WHERE i ->> 'type' = 'webhook' AND jsonb_typeof(i -> 'url') = 'string'
       AND (jsonb_typeof(i -> 'events') IS DISTINCT FROM 'array'
            OR jsonb_array_length(i -> 'events') = 0 OR i -> 'events' ? p_event_type)
$$;

-- ---------------------------------------------------------------------------------------------
-- Runs
-- ---------------------------------------------------------------------------------------------

CREATE FUNCTION tidebase_wire_create_run(
    p_workflow text, p_input jsonb, p_metadata jsonb, p_recovery_webhook text, p_channels jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    r runs;
BEGIN
    INSERT INTO runs (id, workflow_name, input, metadata, recovery_webhook)
    VALUES ('run_' || replace(gen_random_uuid()::text, '-', ''), p_workflow,
            COALESCE(p_input, '{}'::jsonb), COALESCE(p_metadata, '{}'::jsonb), p_recovery_webhook)
    RETURNING * INTO r;
    PERFORM tidebase_add_channels(r.id, p_channels);
    PERFORM tidebase_append_event(r.id, 'run.created',
        jsonb_build_object('workflowName', p_workflow, 'input', COALESCE(p_input, '{}'::jsonb),
                           'channels', tidebase_channel_summary(p_channels)));
    SELECT * INTO r FROM runs WHERE id = r.id;
    RETURN jsonb_build_object('run', tidebase_wire_run(r));
END $$;

-- Begins an attempt (002's tidebase_begin_run) and answers in the wire shape. p_workflow NULL
-- skips the workflow check (the plain `POST /runs/:id/begin` of the reference API).
CREATE FUNCTION tidebase_wire_begin_run(
    p_run_id text, p_workflow text, p_input jsonb, p_owner text, p_lease_ms integer,
    p_create boolean, p_trace_id text, p_span_id text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v jsonb;
    r runs;
BEGIN
    v := tidebase_begin_run(p_run_id, p_workflow, p_input, p_owner, p_lease_ms, p_create,
                            p_trace_id, p_span_id);
    SELECT * INTO r FROM runs WHERE id = p_run_id;
    RETURN jsonb_build_object('outcome', v -> 'outcome', 'run', tidebase_wire_run(r),
                              'leaseOwner', p_owner, 'previous', v -> 'previous',
                              'steps', COALESCE(v -> 'steps', '[]'::jsonb));
END $$;

CREATE FUNCTION tidebase_wire_heartbeat(p_run_id text, p_owner text, p_lease_ms integer)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    r runs;
BEGIN
    UPDATE runs SET lease_expires_at = now() + make_interval(secs => p_lease_ms / 1000.0),
                    updated_at = now()
     WHERE id = p_run_id AND lease_owner = p_owner AND status = 'running'
    RETURNING * INTO r;
    IF FOUND THEN
        RETURN jsonb_build_object('outcome', 'extended', 'run', tidebase_wire_run(r));
    END IF;
    SELECT * INTO r FROM runs WHERE id = p_run_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % not found', p_run_id USING ERRCODE = 'TB404';
    END IF;
    RETURN jsonb_build_object('outcome', CASE WHEN r.status = 'cancelled' THEN 'cancelled'
                                              ELSE 'lease_lost' END,
                              'run', tidebase_wire_run(r));
END $$;

CREATE FUNCTION tidebase_wire_cancel_run(p_run_id text, p_reason text, p_actor text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    r runs;
BEGIN
    r := tidebase_lock_run(p_run_id);
    IF r.status = 'cancelled' THEN
        RETURN jsonb_build_object('outcome', 'already', 'run', tidebase_wire_run(r));
    END IF;
    IF r.status = 'completed' THEN
        RETURN jsonb_build_object('outcome', 'completed', 'run', tidebase_wire_run(r));
    END IF;
    UPDATE runs
       SET status = 'cancelled', cancel_requested_at = COALESCE(cancel_requested_at, now()),
           cancelled_at = now(), cancel_reason = p_reason, cancel_actor = p_actor,
           lease_owner = NULL, lease_expires_at = NULL, completed_at = now(), updated_at = now()
     WHERE id = p_run_id;
    UPDATE run_attempts SET status = 'cancelled', ended_at = now()
     WHERE run_id = p_run_id AND status = 'running';
    PERFORM tidebase_append_event(p_run_id, 'run.cancelled',
        jsonb_build_object('reason', p_reason, 'actor', p_actor));
    SELECT * INTO r FROM runs WHERE id = p_run_id;
    PERFORM tidebase_queue_deliveries(p_run_id, 'run.cancelled',
        jsonb_build_object('run', tidebase_wire_run(r)), NULL, NULL);
    RETURN jsonb_build_object('outcome', 'cancelled', 'run', tidebase_wire_run(r));
END $$;

-- Everything stored about a run, in one round trip; NULL for an unknown run.
CREATE FUNCTION tidebase_wire_run_detail(p_run_id text) RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    r runs;
BEGIN
    SELECT * INTO r FROM runs WHERE id = p_run_id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN jsonb_build_object(
        'run', tidebase_wire_run(r),
        'steps', (SELECT COALESCE(jsonb_agg(tidebase_wire_step(s) ORDER BY s.created_at, s.name),
                                  '[]'::jsonb) FROM steps s WHERE s.run_id = p_run_id),
        'state', (SELECT tidebase_wire_state(st) FROM run_state st WHERE st.run_id = p_run_id),
        'stateStreams', (SELECT COALESCE(jsonb_agg(tidebase_wire_stream(ss) ORDER BY ss.name),
                                         '[]'::jsonb)
                           FROM state_streams ss WHERE ss.run_id = p_run_id),
        'stateVersions', (SELECT COALESCE(jsonb_agg(tidebase_wire_state_version(v)
                                                    ORDER BY v.stream, v.version), '[]'::jsonb)
                            FROM state_versions v WHERE v.run_id = p_run_id),
        'runEdges', (SELECT COALESCE(jsonb_agg(tidebase_wire_edge(e) ORDER BY e.created_at, e.id),
                                     '[]'::jsonb)
                       FROM run_edges e
                      WHERE e.parent_run_id = p_run_id OR e.child_run_id = p_run_id),
        'childRuns', (SELECT COALESCE(jsonb_agg(tidebase_wire_run(c) ORDER BY e.created_at, e.id),
                                      '[]'::jsonb)
                        FROM run_edges e JOIN runs c ON c.id = e.child_run_id
                       WHERE e.parent_run_id = p_run_id),
        'recoveryAttempts', '[]'::jsonb,
        'channels', (SELECT COALESCE(jsonb_agg(tidebase_wire_channel(c) ORDER BY c.created_at, c.id),
                                     '[]'::jsonb) FROM channels c WHERE c.run_id = p_run_id),
        'channelDeliveries', (SELECT COALESCE(jsonb_agg(tidebase_wire_delivery(d)
                                                        ORDER BY d.created_at DESC), '[]'::jsonb)
                                FROM (SELECT * FROM channel_deliveries
                                       WHERE run_id = p_run_id
                                       ORDER BY created_at DESC LIMIT 100) d),
        'gates', (SELECT COALESCE(jsonb_agg(tidebase_wire_gate(g) ORDER BY g.created_at, g.id),
                                  '[]'::jsonb) FROM gates g WHERE g.run_id = p_run_id),
        'usage', (SELECT COALESCE(jsonb_agg(tidebase_wire_usage(u) ORDER BY u.created_at, u.id),
                                  '[]'::jsonb) FROM usage_records u WHERE u.run_id = p_run_id),
        'events', (SELECT COALESCE(jsonb_agg(tidebase_wire_event(e) ORDER BY e.seq), '[]'::jsonb)
                     FROM events e WHERE e.run_id = p_run_id),
        -- extension: one row per attempt (who ran it, its trace)
        'attempts', (SELECT COALESCE(jsonb_agg(jsonb_build_object(
                                'attempt', a.attempt, 'leaseOwner', a.lease_owner,
                                'traceId', a.trace_id, 'spanId', a.span_id, 'status', a.status,
                                'error', a.error, 'startedAt', tidebase_iso(a.started_at),
                                'endedAt', tidebase_iso(a.ended_at)) ORDER BY a.attempt),
                            '[]'::jsonb)
                       FROM run_attempts a WHERE a.run_id = p_run_id));
END $$;

-- ---------------------------------------------------------------------------------------------
-- Steps (the reference protocol: per-step leases, `action` discriminator)
-- ---------------------------------------------------------------------------------------------

CREATE FUNCTION tidebase_wire_begin_step(
    p_run_id text, p_name text, p_input_hash text, p_input jsonb, p_options jsonb,
    p_owner text, p_lease_ms integer)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    r runs;
    s steps;
BEGIN
    -- The run row lock serializes concurrent first begins of a step (and orders the event log).
    r := tidebase_lock_run(p_run_id);
    IF r.status = 'cancelled' THEN
        RETURN jsonb_build_object('action', 'cancelled');
    END IF;
    SELECT * INTO s FROM steps WHERE run_id = p_run_id AND name = p_name;
    IF FOUND THEN
        IF s.input_hash <> p_input_hash THEN
            RETURN jsonb_build_object('action', 'input_mismatch', 'step', tidebase_wire_step(s),
                                      'expectedInputHash', s.input_hash,
                                      'actualInputHash', p_input_hash);
        END IF;
        IF s.status = 'completed' THEN
            RETURN jsonb_build_object('action', 'return', 'step', tidebase_wire_step(s),
                                      'output', s.output);
        END IF;
        IF s.lease_owner IS NOT NULL AND s.lease_owner <> p_owner AND s.lease_expires_at > now() THEN
            RETURN jsonb_build_object('action', 'locked', 'step', tidebase_wire_step(s));
        END IF;
    END IF;
    INSERT INTO steps (id, run_id, name, input_hash, input, options, status, lease_owner,
                       lease_expires_at, attempt, run_attempt, started_at)
    VALUES ('step_' || replace(gen_random_uuid()::text, '-', ''), p_run_id, p_name, p_input_hash,
            COALESCE(p_input, '{}'::jsonb), COALESCE(p_options, '{}'::jsonb), 'running', p_owner,
            now() + make_interval(secs => p_lease_ms / 1000.0), 1, r.attempt, now())
    ON CONFLICT (run_id, name) DO UPDATE
       SET input_hash = EXCLUDED.input_hash, input = EXCLUDED.input, options = EXCLUDED.options,
           status = 'running', lease_owner = EXCLUDED.lease_owner,
           lease_expires_at = EXCLUDED.lease_expires_at, attempt = steps.attempt + 1,
           run_attempt = EXCLUDED.run_attempt, resume_decision = NULL,
           started_at = COALESCE(steps.started_at, now()), updated_at = now()
    RETURNING * INTO s;
    PERFORM tidebase_append_event(p_run_id, 'step.started',
        jsonb_build_object('stepId', s.id, 'name', p_name, 'attempt', s.attempt,
                           'resumeContract', tidebase_wire_resume_contract(s.options)));
    RETURN jsonb_build_object('action', 'execute', 'step', tidebase_wire_step(s),
                              'leaseOwner', p_owner);
END $$;

-- Completes a step begun with tidebase_wire_begin_step; fenced by the step lease.
CREATE FUNCTION tidebase_wire_complete_step(
    p_run_id text, p_step_id text, p_owner text, p_output jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    s steps;
    v_contract jsonb;
BEGIN
    PERFORM tidebase_lock_run(p_run_id);
    UPDATE steps
       SET status = 'completed', output = p_output, error = NULL, resume_decision = NULL,
           lease_owner = NULL, lease_expires_at = NULL, completed_at = now(), updated_at = now()
     WHERE id = p_step_id AND run_id = p_run_id AND lease_owner = p_owner
    RETURNING * INTO s;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('outcome', 'lease_lost');
    END IF;
    v_contract := tidebase_wire_resume_contract(s.options);
    PERFORM tidebase_append_event(p_run_id, 'step.completed',
        jsonb_build_object('stepId', s.id, 'name', s.name,
                           'checkpointInvariant', v_contract -> 'checkpointInvariant',
                           'verifiedBy', v_contract -> 'verifiedBy'));
    RETURN jsonb_build_object('outcome', 'completed', 'step', tidebase_wire_step(s));
END $$;

-- Fails a step begun with tidebase_wire_begin_step; fenced by the step lease. Without a
-- decision, the server infers one from the stored options (reference rules).
CREATE FUNCTION tidebase_wire_fail_step(
    p_run_id text, p_step_id text, p_owner text, p_error jsonb, p_retryable boolean,
    p_decision text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    s steps;
    v_decision text := p_decision;
    v_status text;
    v_contract jsonb;
BEGIN
    PERFORM tidebase_lock_run(p_run_id);
    SELECT * INTO s FROM steps WHERE id = p_step_id AND run_id = p_run_id;
    IF NOT FOUND OR s.lease_owner IS DISTINCT FROM p_owner THEN
        RETURN jsonb_build_object('outcome', 'lease_lost');
    END IF;
    v_contract := tidebase_wire_resume_contract(s.options);
    IF v_decision IS NULL THEN
        v_decision := CASE
            WHEN p_retryable THEN 'auto_retry'
            WHEN v_contract ->> 'replay' = 'manual' THEN 'manual_review'
            WHEN v_contract ->> 'replay' = 'auto' THEN 'safe_replay'
            ELSE 'fail_hard' END;
    END IF;
    v_status := CASE
        WHEN p_retryable OR v_decision = 'auto_retry' THEN 'failed_retryable'
        WHEN v_decision = 'manual_review' THEN 'manual_review'
        ELSE 'failed' END;
    UPDATE steps
       SET status = v_status, error = p_error, resume_decision = v_decision, lease_owner = NULL,
           lease_expires_at = NULL, updated_at = now()
     WHERE id = s.id
    RETURNING * INTO s;
    PERFORM tidebase_append_event(p_run_id, 'step.failed',
        jsonb_build_object('stepId', s.id, 'name', s.name, 'retryable', p_retryable,
                           'resumeDecision', v_decision, 'resumeContract', v_contract,
                           'error', p_error));
    PERFORM tidebase_queue_deliveries(p_run_id, 'step.failed',
        jsonb_build_object('step', tidebase_wire_step(s), 'retryable', p_retryable,
                           'resumeDecision', v_decision, 'error', p_error), NULL, NULL);
    RETURN jsonb_build_object('outcome', 'failed', 'step', tidebase_wire_step(s));
END $$;

-- ---------------------------------------------------------------------------------------------
-- State, snapshots, usage
-- ---------------------------------------------------------------------------------------------

-- PUT/PATCH state: 002's tidebase_write_state (fenced when p_owner is given) plus the wire
-- answer and channel deliveries.
CREATE FUNCTION tidebase_wire_write_state(
    p_run_id text, p_owner text, p_value jsonb, p_patch boolean, p_stream text, p_label text,
    p_reason text, p_importance text, p_metadata jsonb, p_created_by text, p_step text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    st run_state;
    v state_versions;
BEGIN
    PERFORM tidebase_write_state(p_run_id, p_owner, p_value, p_patch, p_stream, p_label,
                                 p_reason, p_importance, p_metadata, p_created_by, p_step);
    SELECT * INTO st FROM run_state WHERE run_id = p_run_id;
    SELECT * INTO v FROM state_versions
     WHERE run_id = p_run_id AND stream = COALESCE(p_stream, 'run')
     ORDER BY version DESC LIMIT 1;
    PERFORM tidebase_queue_deliveries(p_run_id, 'state.updated',
        jsonb_build_object('state', tidebase_wire_state(st),
                           'stateVersion', tidebase_wire_state_version_ref(v)), NULL, NULL);
    RETURN jsonb_build_object('state', tidebase_wire_state(st));
END $$;

-- Stores a labelled copy of a stream's current value as a new version; NULL when the stream
-- has no value yet.
CREATE FUNCTION tidebase_wire_save_state(
    p_run_id text, p_stream text, p_label text, p_reason text, p_importance text,
    p_metadata jsonb, p_created_by text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_value jsonb;
    v_found boolean;
    v state_versions;
BEGIN
    PERFORM tidebase_lock_run(p_run_id);
    IF p_stream = 'run' THEN
        SELECT value INTO v_value FROM run_state WHERE run_id = p_run_id;
    ELSE
        SELECT current_value INTO v_value FROM state_streams
         WHERE run_id = p_run_id AND name = p_stream;
    END IF;
    v_found := FOUND;
    IF NOT v_found OR v_value IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO state_versions (run_id, stream, version, value, label, reason, importance,
                                metadata, created_by)
    SELECT p_run_id, p_stream, COALESCE(max(version), 0) + 1, v_value, p_label, p_reason,
           p_importance, COALESCE(p_metadata, '{}'::jsonb), p_created_by
      FROM state_versions WHERE run_id = p_run_id AND stream = p_stream
    RETURNING * INTO v;
    PERFORM tidebase_append_event(p_run_id, 'state.saved',
        jsonb_build_object('stateVersion', tidebase_wire_state_version_ref(v)));
    RETURN tidebase_wire_state_version(v);
END $$;

CREATE FUNCTION tidebase_wire_snapshot(
    p_run_id text, p_label text, p_state jsonb, p_target_type text, p_target_id text,
    p_reason text, p_metadata jsonb, p_created_by text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_stream text := p_target_type || ':' || p_target_id;
    v state_versions;
BEGIN
    PERFORM tidebase_lock_run(p_run_id);
    INSERT INTO state_streams (run_id, name, target_type, target_id)
    VALUES (p_run_id, v_stream, p_target_type, p_target_id)
    ON CONFLICT (run_id, name) DO UPDATE
       SET target_type = EXCLUDED.target_type, target_id = EXCLUDED.target_id,
           updated_at = now();
    INSERT INTO state_versions (run_id, stream, version, value, label, reason, importance,
                                metadata, created_by)
    SELECT p_run_id, v_stream, COALESCE(max(version), 0) + 1, COALESCE(p_state, '{}'::jsonb),
           p_label, p_reason, 'milestone', COALESCE(p_metadata, '{}'::jsonb), p_created_by
      FROM state_versions WHERE run_id = p_run_id AND stream = v_stream
    RETURNING * INTO v;
    PERFORM tidebase_append_event(p_run_id, 'snapshot.created',
        jsonb_build_object('stateVersion', tidebase_wire_state_version_ref(v)));
    RETURN tidebase_wire_state_version(v);
END $$;

-- Records usage. With p_owner (our SDK) this is 002's fenced, idempotent tidebase_record_usage
-- under the caller's record key; without it (0.7 clients) the write is unfenced under a fresh
-- key, as in the reference. p_step_id (wire) or p_step_name (SDK) ties the record to a step.
CREATE FUNCTION tidebase_wire_record_usage(
    p_run_id text, p_owner text, p_key text, p_step_id text, p_step_name text, p_kind text,
    p_provider text, p_model text, p_label text, p_quantity double precision, p_unit text,
    p_input_tokens bigint, p_output_tokens bigint, p_total_tokens bigint, p_cost_usd numeric,
    p_metadata jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_step_name text := p_step_name;
    v_step_id text;
    v_key text := COALESCE(p_key, 'rec_' || replace(gen_random_uuid()::text, '-', ''));
    v_inserted boolean;
    u usage_records;
BEGIN
    IF p_owner IS NOT NULL THEN
        v_inserted := (tidebase_record_usage(
            p_run_id, p_owner, v_key, v_step_name, p_kind, p_provider, p_model, p_label,
            p_quantity, p_unit, p_input_tokens, p_output_tokens, p_total_tokens, p_cost_usd,
            p_metadata) ->> 'inserted')::boolean;
        SELECT * INTO u FROM usage_records WHERE run_id = p_run_id AND record_key = v_key;
    ELSE
        PERFORM tidebase_lock_run(p_run_id);
        IF p_step_id IS NOT NULL THEN
            SELECT id, name INTO v_step_id, v_step_name
              FROM steps WHERE id = p_step_id AND run_id = p_run_id;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'stepId: run % has no step %', p_run_id, p_step_id
                    USING ERRCODE = 'TB400';
            END IF;
        ELSIF v_step_name IS NOT NULL THEN
            SELECT id INTO v_step_id FROM steps WHERE run_id = p_run_id AND name = v_step_name;
        END IF;
        INSERT INTO usage_records (run_id, step_id, step_name, record_key, kind, provider, model,
                                   label, quantity, unit, input_tokens, output_tokens,
                                   total_tokens, cost_usd, metadata)
        VALUES (p_run_id, v_step_id, v_step_name, v_key, COALESCE(p_kind, 'custom'), p_provider,
                p_model, p_label, p_quantity, p_unit, p_input_tokens, p_output_tokens,
                COALESCE(p_total_tokens,
                         CASE WHEN p_input_tokens IS NOT NULL OR p_output_tokens IS NOT NULL
                              THEN COALESCE(p_input_tokens, 0) + COALESCE(p_output_tokens, 0) END),
                p_cost_usd, COALESCE(p_metadata, '{}'::jsonb))
        ON CONFLICT (run_id, record_key) DO NOTHING
        RETURNING * INTO u;
        v_inserted := FOUND;
        IF v_inserted THEN
            PERFORM tidebase_append_event(p_run_id, 'usage.recorded',
                jsonb_build_object('usageId', u.id, 'stepName', v_step_name, 'kind', u.kind,
                                   'usage', tidebase_wire_usage(u)));
        ELSE
            SELECT * INTO u FROM usage_records WHERE run_id = p_run_id AND record_key = v_key;
        END IF;
    END IF;
    IF v_inserted THEN
        PERFORM tidebase_queue_deliveries(p_run_id, 'usage.recorded',
            jsonb_build_object('usage', tidebase_wire_usage(u)), NULL, NULL);
    END IF;
    RETURN jsonb_build_object('usage', tidebase_wire_usage(u), 'inserted', v_inserted);
END $$;

-- ---------------------------------------------------------------------------------------------
-- Gates
-- ---------------------------------------------------------------------------------------------

CREATE FUNCTION tidebase_wire_begin_gate(
    p_run_id text, p_name text, p_prompt text, p_data jsonb, p_channels jsonb,
    p_capability jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    r runs;
    g gates;
BEGIN
    r := tidebase_lock_run(p_run_id);
    IF r.status = 'cancelled' THEN
        RETURN jsonb_build_object('outcome', 'cancelled', 'run', tidebase_wire_run(r));
    END IF;
    SELECT * INTO g FROM gates WHERE run_id = p_run_id AND name = p_name;
    IF NOT FOUND THEN
        INSERT INTO gates (run_id, name, prompt, data, capability, channels)
        VALUES (p_run_id, p_name, p_prompt, COALESCE(p_data, '{}'::jsonb), p_capability,
                COALESCE(p_channels, '[]'::jsonb))
        RETURNING * INTO g;
        PERFORM tidebase_append_event(p_run_id, 'gate.created',
            jsonb_build_object('gate', tidebase_wire_gate(g)));
        PERFORM tidebase_queue_deliveries(p_run_id, 'gate.created',
            jsonb_build_object('gate', tidebase_wire_gate(g)), g.channels, g.id);
    END IF;
    RETURN jsonb_build_object('outcome', 'ok',
                              'action', CASE WHEN g.status = 'pending' THEN 'wait' ELSE 'return' END,
                              'gate', tidebase_wire_gate(g));
END $$;

CREATE FUNCTION tidebase_wire_get_gate(p_run_id text, p_gate_id text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('gate', tidebase_wire_gate(g), 'runStatus', r.status)
      FROM gates g JOIN runs r ON r.id = g.run_id
     WHERE g.run_id = p_run_id AND g.id = p_gate_id
$$;

-- Exactly once: a single conditional update (pending and matching token).
CREATE FUNCTION tidebase_wire_resolve_gate(
    p_run_id text, p_gate_id text, p_token text, p_decision text, p_actor text, p_payload jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    g gates;
BEGIN
    PERFORM tidebase_lock_run(p_run_id);
    UPDATE gates
       SET status = p_decision, decision = p_decision, actor = p_actor,
           decision_payload = COALESCE(p_payload, '{}'::jsonb), resolved_at = now(),
           updated_at = now()
     WHERE run_id = p_run_id AND id = p_gate_id AND resolve_token = p_token
       AND status = 'pending'
    RETURNING * INTO g;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('outcome', 'conflict');
    END IF;
    PERFORM tidebase_append_event(p_run_id, 'gate.resolved',
        jsonb_build_object('gate', tidebase_wire_gate(g)));
    PERFORM tidebase_queue_deliveries(p_run_id, 'gate.resolved',
        jsonb_build_object('gate', tidebase_wire_gate(g)), g.channels, g.id);
    RETURN jsonb_build_object('outcome', 'resolved', 'gate', tidebase_wire_gate(g));
END $$;

-- ---------------------------------------------------------------------------------------------
-- Children
-- ---------------------------------------------------------------------------------------------

-- Idempotent per (parent, name): the parent row lock serializes concurrent creations.
CREATE FUNCTION tidebase_wire_create_child(
    p_parent_id text, p_name text, p_workflow text, p_input jsonb, p_metadata jsonb,
    p_recovery_webhook text, p_channels jsonb, p_edge_type text, p_edge_metadata jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    c runs;
    e run_edges;
BEGIN
    PERFORM tidebase_lock_run(p_parent_id);
    SELECT * INTO e FROM run_edges WHERE parent_run_id = p_parent_id AND name = p_name;
    IF FOUND THEN
        SELECT * INTO c FROM runs WHERE id = e.child_run_id;
        RETURN jsonb_build_object('run', tidebase_wire_run(c), 'edge', tidebase_wire_edge(e),
                                  'created', false);
    END IF;
    INSERT INTO runs (id, workflow_name, input, metadata, recovery_webhook)
    VALUES ('run_' || replace(gen_random_uuid()::text, '-', ''), p_workflow,
            COALESCE(p_input, '{}'::jsonb),
            COALESCE(p_metadata, '{}'::jsonb)
                || jsonb_build_object('parentRunId', p_parent_id, 'parentEdgeName', p_name),
            p_recovery_webhook)
    RETURNING * INTO c;
    PERFORM tidebase_add_channels(c.id, p_channels);
    INSERT INTO run_edges (parent_run_id, child_run_id, name, edge_type, metadata)
    VALUES (p_parent_id, c.id, p_name, COALESCE(p_edge_type, 'child'),
            COALESCE(p_edge_metadata, '{}'::jsonb))
    RETURNING * INTO e;
    PERFORM tidebase_append_event(c.id, 'run.created',
        jsonb_build_object('workflowName', p_workflow, 'input', COALESCE(p_input, '{}'::jsonb),
                           'parentRunId', p_parent_id, 'edgeName', p_name,
                           'channels', tidebase_channel_summary(p_channels)));
    SELECT * INTO c FROM runs WHERE id = c.id;
    PERFORM tidebase_append_event(p_parent_id, 'run.child.created',
        jsonb_build_object('childRun', tidebase_wire_run(c), 'edge', tidebase_wire_edge(e)));
    RETURN jsonb_build_object('run', tidebase_wire_run(c), 'edge', tidebase_wire_edge(e),
                              'created', true);
END $$;
