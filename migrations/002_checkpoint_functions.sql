-- The checkpoint protocol as server-side functions, so each SDK operation is one round trip:
-- begin a run (lease + every checkpoint), record a step's start, completion or failure, record
-- usage. Each write is fenced by the run lease and appends to the gap-free event log.
--
-- Errors carry SQLSTATEs the store maps to typed exceptions:
--   TB404 run not found, TB409 lease lost, TB410 run cancelled, TB422 input mismatch.

CREATE FUNCTION tidebase_append_event(p_run_id text, p_type text, p_payload jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint;
BEGIN
    UPDATE runs SET event_seq = event_seq + 1, updated_at = now()
     WHERE id = p_run_id RETURNING event_seq INTO v_seq;
    INSERT INTO events (run_id, seq, type, payload) VALUES (p_run_id, v_seq, p_type, p_payload);
    PERFORM pg_notify('tidebase_events', p_run_id || ':' || v_seq);
    RETURN v_seq;
END $$;

-- Locks the run row and checks that p_owner holds its lease. The lease stays usable by its holder
-- after expiry until another worker takes the run over (then the holder is fenced out).
CREATE FUNCTION tidebase_lock_leased_run(p_run_id text, p_owner text)
RETURNS runs LANGUAGE plpgsql AS $$
DECLARE
    r runs;
BEGIN
    SELECT * INTO r FROM runs WHERE id = p_run_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % not found', p_run_id USING ERRCODE = 'TB404';
    END IF;
    IF r.status = 'cancelled' THEN
        RAISE EXCEPTION 'run % is cancelled', p_run_id USING ERRCODE = 'TB410',
            DETAIL = json_build_object('reason', r.cancel_reason, 'actor', r.cancel_actor)::text;
    END IF;
    IF r.lease_owner IS DISTINCT FROM p_owner OR r.status <> 'running' THEN
        RAISE EXCEPTION 'lease on run % lost', p_run_id USING ERRCODE = 'TB409',
            DETAIL = json_build_object('leaseOwner', r.lease_owner, 'status', r.status,
                                       'leaseExpiresAt', r.lease_expires_at)::text;
    END IF;
    RETURN r;
END $$;

CREATE FUNCTION tidebase_step_json(s steps, p_with_output boolean)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', s.id, 'name', s.name, 'parentName', s.parent_name, 'status', s.status,
        'inputHash', s.input_hash,
        'options', s.options, 'resumeDecision', s.resume_decision, 'attempt', s.attempt,
        'runAttempt', s.run_attempt, 'traceId', s.trace_id, 'spanId', s.span_id,
        'error', s.error,
        'output', CASE WHEN p_with_output THEN s.output END)
$$;

-- Begins an attempt: creates the run when asked, takes the lease, records the attempt, and
-- returns every step of the run (outputs of completed ones, with the usage they recorded).
CREATE FUNCTION tidebase_begin_run(
    p_run_id text, p_workflow text, p_input jsonb, p_owner text, p_lease_ms integer,
    p_create boolean, p_trace_id text, p_span_id text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    r runs;
    v_prev jsonb;
    v_steps jsonb;
BEGIN
    SELECT * INTO r FROM runs WHERE id = p_run_id FOR UPDATE;
    IF NOT FOUND THEN
        IF NOT p_create THEN
            RAISE EXCEPTION 'run % not found', p_run_id USING ERRCODE = 'TB404';
        END IF;
        INSERT INTO runs (id, workflow_name, input) VALUES (p_run_id, p_workflow, COALESCE(p_input, '{}'::jsonb))
        ON CONFLICT (id) DO NOTHING;
        SELECT * INTO r FROM runs WHERE id = p_run_id FOR UPDATE;
        IF r.event_seq = 0 THEN
            PERFORM tidebase_append_event(p_run_id, 'run.created',
                jsonb_build_object('workflowName', p_workflow));
        END IF;
    END IF;
    IF r.workflow_name <> p_workflow THEN
        RETURN jsonb_build_object('outcome', 'workflow_mismatch', 'run', to_jsonb(r));
    END IF;
    IF r.status = 'completed' THEN
        RETURN jsonb_build_object('outcome', 'completed', 'run', to_jsonb(r));
    END IF;
    IF p_input IS NOT NULL AND r.input IS DISTINCT FROM p_input THEN
        RETURN jsonb_build_object('outcome', 'input_mismatch', 'run', to_jsonb(r));
    END IF;
    IF r.status = 'cancelled' THEN
        RETURN jsonb_build_object('outcome', 'cancelled', 'run', to_jsonb(r));
    END IF;
    IF r.status = 'running' AND r.lease_owner IS DISTINCT FROM p_owner
       AND r.lease_expires_at > now() THEN
        RETURN jsonb_build_object('outcome', 'leased', 'run', to_jsonb(r));
    END IF;

    IF r.status = 'running' AND r.lease_owner = p_owner THEN
        -- Already ours: a queue claim counted this attempt, or this is a retried request.
        UPDATE runs SET lease_expires_at = now() + make_interval(secs => p_lease_ms / 1000.0),
                        updated_at = now()
         WHERE id = p_run_id RETURNING * INTO r;
    ELSE
        UPDATE runs SET status = 'running', attempt = attempt + 1, lease_owner = p_owner,
                        lease_expires_at = now() + make_interval(secs => p_lease_ms / 1000.0),
                        error = NULL, failure_class = NULL, updated_at = now()
         WHERE id = p_run_id RETURNING * INTO r;
        -- An attempt that was still 'running' was abandoned (crash or lost lease).
        UPDATE run_attempts SET status = 'abandoned', ended_at = now()
         WHERE run_id = p_run_id AND status = 'running';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM run_attempts WHERE run_id = p_run_id AND attempt = r.attempt) THEN
        INSERT INTO run_attempts (run_id, attempt, lease_owner, trace_id, span_id)
        VALUES (p_run_id, r.attempt, p_owner, p_trace_id, p_span_id);
        PERFORM tidebase_append_event(p_run_id, 'run.started',
            jsonb_build_object('attempt', r.attempt, 'leaseOwner', p_owner));
    END IF;

    SELECT jsonb_build_object('traceId', a.trace_id, 'spanId', a.span_id) INTO v_prev
      FROM run_attempts a
     WHERE a.run_id = p_run_id AND a.attempt < r.attempt AND a.trace_id IS NOT NULL
     ORDER BY a.attempt DESC LIMIT 1;

    SELECT COALESCE(jsonb_agg(
               tidebase_step_json(s, s.status = 'completed') || jsonb_build_object('usage',
                   CASE WHEN s.status = 'completed' THEN (
                       SELECT COALESCE(jsonb_agg(jsonb_build_object(
                                  'provider', u.provider, 'model', u.model,
                                  'inputTokens', u.input_tokens, 'outputTokens', u.output_tokens,
                                  'costUsd', u.cost_usd)), '[]'::jsonb)
                         FROM (SELECT provider, model, sum(input_tokens) AS input_tokens,
                                      sum(output_tokens) AS output_tokens,
                                      sum(cost_usd) AS cost_usd
                                 FROM usage_records
                                WHERE run_id = p_run_id AND step_name = s.name
                                GROUP BY provider, model) u)
                   ELSE '[]'::jsonb END)
               ORDER BY s.created_at), '[]'::jsonb)
      INTO v_steps
      FROM steps s WHERE s.run_id = p_run_id;

    RETURN jsonb_build_object('outcome', 'begun', 'run', to_jsonb(r), 'previous', v_prev,
                              'steps', v_steps);
END $$;

-- Records that a side-effecting step started (so a crash mid-effect is visible).
CREATE FUNCTION tidebase_start_step(
    p_run_id text, p_owner text, p_name text, p_parent text, p_input_hash text, p_input jsonb,
    p_options jsonb, p_lease_ms integer)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    r runs;
    s steps;
BEGIN
    r := tidebase_lock_leased_run(p_run_id, p_owner);
    SELECT * INTO s FROM steps WHERE run_id = p_run_id AND name = p_name;
    IF FOUND AND s.input_hash <> p_input_hash THEN
        RAISE EXCEPTION 'input mismatch for step %', p_name USING ERRCODE = 'TB422',
            DETAIL = json_build_object('expected', s.input_hash, 'actual', p_input_hash)::text;
    END IF;
    IF FOUND AND s.status = 'completed' THEN
        RETURN jsonb_build_object('action', 'return', 'step', tidebase_step_json(s, true));
    END IF;
    INSERT INTO steps (id, run_id, name, parent_name, input_hash, input, options, status,
                       lease_owner, lease_expires_at, attempt, run_attempt, started_at)
    VALUES ('step_' || replace(gen_random_uuid()::text, '-', ''), p_run_id, p_name, p_parent,
            p_input_hash, p_input, COALESCE(p_options, '{}'::jsonb), 'running', p_owner,
            now() + make_interval(secs => p_lease_ms / 1000.0), 1, r.attempt, now())
    ON CONFLICT (run_id, name) DO UPDATE
       SET status = 'running', lease_owner = EXCLUDED.lease_owner,
           lease_expires_at = EXCLUDED.lease_expires_at, attempt = steps.attempt + 1,
           run_attempt = EXCLUDED.run_attempt, options = EXCLUDED.options,
           error = NULL, resume_decision = NULL, started_at = now(), updated_at = now()
    RETURNING * INTO s;
    PERFORM tidebase_append_event(p_run_id, 'step.started',
        jsonb_build_object('stepId', s.id, 'name', p_name, 'attempt', s.attempt));
    RETURN jsonb_build_object('action', 'execute', 'step', tidebase_step_json(s, false));
END $$;

-- Writes a step's checkpoint: one statement for a pure step (no start record needed).
-- One UPDATE of the run row checks the lease, extends it and hands out the event seq.
CREATE FUNCTION tidebase_complete_step(
    p_run_id text, p_owner text, p_name text, p_parent text, p_input_hash text, p_input jsonb,
    p_options jsonb, p_output jsonb, p_trace_id text, p_span_id text, p_lease_ms integer)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_attempt integer;
    v_seq bigint;
    s steps;
BEGIN
    UPDATE runs SET event_seq = event_seq + 1, updated_at = now(),
                    lease_expires_at = now() + make_interval(secs => p_lease_ms / 1000.0)
     WHERE id = p_run_id AND lease_owner = p_owner AND status = 'running'
    RETURNING attempt, event_seq INTO v_attempt, v_seq;
    IF NOT FOUND THEN
        PERFORM tidebase_lock_leased_run(p_run_id, p_owner);  -- raises the precise error
        RAISE EXCEPTION 'lease on run % lost', p_run_id USING ERRCODE = 'TB409';
    END IF;
    INSERT INTO steps (id, run_id, name, parent_name, input_hash, input, options, status, output,
                       attempt, run_attempt, trace_id, span_id, started_at, completed_at)
    VALUES ('step_' || replace(gen_random_uuid()::text, '-', ''), p_run_id, p_name, p_parent,
            p_input_hash, p_input, COALESCE(p_options, '{}'::jsonb), 'completed', p_output,
            1, v_attempt, p_trace_id, p_span_id, now(), now())
    ON CONFLICT (run_id, name) DO UPDATE
       SET status = 'completed', output = EXCLUDED.output, error = NULL, resume_decision = NULL,
           lease_owner = NULL, lease_expires_at = NULL,
           attempt = CASE WHEN steps.status = 'running' THEN steps.attempt
                          ELSE steps.attempt + 1 END,
           run_attempt = EXCLUDED.run_attempt, trace_id = EXCLUDED.trace_id,
           span_id = EXCLUDED.span_id, completed_at = now(), updated_at = now()
     WHERE steps.status <> 'completed' AND steps.input_hash = EXCLUDED.input_hash
    RETURNING * INTO s;
    IF NOT FOUND THEN
        SELECT * INTO s FROM steps WHERE run_id = p_run_id AND name = p_name;
        IF s.input_hash <> p_input_hash THEN
            RAISE EXCEPTION 'input mismatch for step %', p_name USING ERRCODE = 'TB422',
                DETAIL = json_build_object('expected', s.input_hash, 'actual', p_input_hash)::text;
        END IF;
        -- Completed already by this lease holder (e.g. a retried request): the first
        -- checkpoint stands; the seq handed out above still gets its event (gap-free log).
        INSERT INTO events (run_id, seq, type, payload) VALUES (p_run_id, v_seq,
            'step.completion_ignored', jsonb_build_object('stepId', s.id, 'name', p_name));
        RETURN jsonb_build_object('action', 'return', 'step', tidebase_step_json(s, true));
    END IF;
    INSERT INTO events (run_id, seq, type, payload) VALUES (p_run_id, v_seq, 'step.completed',
        jsonb_build_object('stepId', s.id, 'name', p_name, 'attempt', s.attempt));
    PERFORM pg_notify('tidebase_events', p_run_id || ':' || v_seq);
    RETURN jsonb_build_object('action', 'completed', 'step', tidebase_step_json(s, false));
END $$;

CREATE FUNCTION tidebase_fail_step(
    p_run_id text, p_owner text, p_name text, p_parent text, p_input_hash text, p_input jsonb,
    p_options jsonb, p_error jsonb, p_status text, p_resume_decision text, p_trace_id text,
    p_span_id text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    r runs;
    s steps;
BEGIN
    r := tidebase_lock_leased_run(p_run_id, p_owner);
    INSERT INTO steps (id, run_id, name, parent_name, input_hash, input, options, status, error,
                       resume_decision, attempt, run_attempt, trace_id, span_id, started_at)
    VALUES ('step_' || replace(gen_random_uuid()::text, '-', ''), p_run_id, p_name, p_parent,
            p_input_hash, p_input, COALESCE(p_options, '{}'::jsonb), p_status, p_error,
            p_resume_decision, 1, r.attempt, p_trace_id, p_span_id, now())
    ON CONFLICT (run_id, name) DO UPDATE
       SET status = EXCLUDED.status, error = EXCLUDED.error,
           resume_decision = EXCLUDED.resume_decision, lease_owner = NULL,
           lease_expires_at = NULL,
           attempt = CASE WHEN steps.status = 'running' THEN steps.attempt
                          ELSE steps.attempt + 1 END,
           run_attempt = EXCLUDED.run_attempt, trace_id = EXCLUDED.trace_id,
           span_id = EXCLUDED.span_id, updated_at = now()
     WHERE steps.status <> 'completed' AND steps.input_hash = EXCLUDED.input_hash
    RETURNING * INTO s;
    IF NOT FOUND THEN
        SELECT * INTO s FROM steps WHERE run_id = p_run_id AND name = p_name;
        IF s.input_hash <> p_input_hash THEN
            RAISE EXCEPTION 'input mismatch for step %', p_name USING ERRCODE = 'TB422',
                DETAIL = json_build_object('expected', s.input_hash, 'actual', p_input_hash)::text;
        END IF;
        RETURN jsonb_build_object('action', 'return', 'step', tidebase_step_json(s, true));
    END IF;
    PERFORM tidebase_append_event(p_run_id, 'step.failed',
        jsonb_build_object('stepId', s.id, 'name', p_name, 'attempt', s.attempt,
                           'status', p_status, 'resumeDecision', p_resume_decision,
                           'error', p_error));
    RETURN jsonb_build_object('action', 'failed', 'step', tidebase_step_json(s, false));
END $$;

-- Writes a usage record once per (run, record_key); returns whether it was new.
CREATE FUNCTION tidebase_record_usage(
    p_run_id text, p_owner text, p_key text, p_step_name text, p_kind text, p_provider text,
    p_model text, p_label text, p_quantity double precision, p_unit text, p_input_tokens bigint,
    p_output_tokens bigint, p_total_tokens bigint, p_cost_usd numeric, p_metadata jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_id text;
    v_step_id text;
BEGIN
    PERFORM tidebase_lock_leased_run(p_run_id, p_owner);
    IF p_step_name IS NOT NULL THEN
        SELECT id INTO v_step_id FROM steps WHERE run_id = p_run_id AND name = p_step_name;
    END IF;
    INSERT INTO usage_records (run_id, step_id, step_name, record_key, kind, provider, model,
                               label, quantity, unit, input_tokens, output_tokens, total_tokens,
                               cost_usd, metadata)
    VALUES (p_run_id, v_step_id, p_step_name, p_key, COALESCE(p_kind, 'custom'), p_provider,
            p_model, p_label, p_quantity, p_unit, p_input_tokens, p_output_tokens,
            COALESCE(p_total_tokens,
                     CASE WHEN p_input_tokens IS NOT NULL OR p_output_tokens IS NOT NULL
                          THEN COALESCE(p_input_tokens, 0) + COALESCE(p_output_tokens, 0) END),
            p_cost_usd, COALESCE(p_metadata, '{}'::jsonb))
    ON CONFLICT (run_id, record_key) DO NOTHING
    RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        RETURN jsonb_build_object('inserted', false);
    END IF;
    PERFORM tidebase_append_event(p_run_id, 'usage.recorded',
        jsonb_build_object('usageId', v_id, 'stepName', p_step_name,
                           'kind', COALESCE(p_kind, 'custom'), 'provider', p_provider,
                           'model', p_model, 'inputTokens', p_input_tokens,
                           'outputTokens', p_output_tokens, 'costUsd', p_cost_usd));
    RETURN jsonb_build_object('inserted', true, 'id', v_id);
END $$;

-- Replaces (or shallow-merges into) the run's state and appends a version to a stream.
-- p_owner NULL skips the lease check (the HTTP API's unfenced state routes).
CREATE FUNCTION tidebase_write_state(
    p_run_id text, p_owner text, p_value jsonb, p_patch boolean, p_stream text, p_label text,
    p_reason text, p_importance text, p_metadata jsonb, p_created_by text, p_step_id text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_state run_state;
    v_new jsonb;
    v_version integer;
BEGIN
    IF p_owner IS NULL THEN
        PERFORM 1 FROM runs WHERE id = p_run_id FOR UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'run % not found', p_run_id USING ERRCODE = 'TB404';
        END IF;
    ELSE
        PERFORM tidebase_lock_leased_run(p_run_id, p_owner);
    END IF;
    SELECT * INTO v_state FROM run_state WHERE run_id = p_run_id;
    p_value := COALESCE(p_value, 'null'::jsonb);
    IF p_patch THEN
        IF jsonb_typeof(p_value) <> 'object' THEN
            RAISE EXCEPTION 'a state patch must be a JSON object' USING ERRCODE = 'TB400';
        END IF;
        v_new := CASE WHEN v_state.value IS NOT NULL AND jsonb_typeof(v_state.value) = 'object'
                      THEN v_state.value || p_value ELSE p_value END;
    ELSE
        v_new := p_value;
    END IF;
    INSERT INTO run_state (run_id, value, version) VALUES (p_run_id, v_new, 1)
    ON CONFLICT (run_id) DO UPDATE
       SET value = EXCLUDED.value, version = run_state.version + 1, updated_at = now()
    RETURNING * INTO v_state;
    SELECT COALESCE(max(version), 0) + 1 INTO v_version
      FROM state_versions WHERE run_id = p_run_id AND stream = COALESCE(p_stream, 'run');
    INSERT INTO state_versions (run_id, stream, step_id, version, value, patch, label, reason,
                                importance, metadata, created_by)
    VALUES (p_run_id, COALESCE(p_stream, 'run'), p_step_id, v_version, v_new,
            CASE WHEN p_patch THEN p_value END, p_label, p_reason,
            COALESCE(p_importance, 'normal'), COALESCE(p_metadata, '{}'::jsonb), p_created_by);
    PERFORM tidebase_append_event(p_run_id, 'state.updated',
        jsonb_build_object('version', v_state.version, 'stream', COALESCE(p_stream, 'run'),
                           'patch', p_patch));
    RETURN jsonb_build_object('runId', v_state.run_id, 'value', v_state.value,
                              'version', v_state.version, 'updatedAt', v_state.updated_at);
END $$;

-- Operator action on a step that cannot go on by itself (parked in manual review, failed for
-- good, or left running by a dead worker): let it execute again, or record its output.
-- Refused while a live worker holds the run, so a real result is never overwritten.
CREATE FUNCTION tidebase_resolve_step(
    p_run_id text, p_name text, p_status text, p_output jsonb, p_resume_decision text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    r runs;
    s steps;
BEGIN
    SELECT * INTO r FROM runs WHERE id = p_run_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % not found', p_run_id USING ERRCODE = 'TB404';
    END IF;
    IF r.status = 'running' AND r.lease_expires_at > now() THEN
        RAISE EXCEPTION 'run % is being executed by % (lease until %); resolve it once that '
            'worker has stopped', p_run_id, r.lease_owner, r.lease_expires_at
            USING ERRCODE = 'TB423';
    END IF;
    UPDATE steps
       SET status = p_status, output = p_output, resume_decision = p_resume_decision,
           error = NULL, lease_owner = NULL, lease_expires_at = NULL, updated_at = now(),
           completed_at = CASE WHEN p_status = 'completed' THEN now() ELSE completed_at END
     WHERE run_id = p_run_id AND name = p_name
       AND status IN ('manual_review', 'failed', 'failed_retryable', 'running')
    RETURNING * INTO s;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % has no step named ''%'' waiting to be resolved (only parked, failed or '
            'interrupted steps can be)', p_run_id, p_name USING ERRCODE = 'TB424';
    END IF;
    PERFORM tidebase_append_event(p_run_id, 'step.resolved',
        jsonb_build_object('stepId', s.id, 'name', s.name, 'status', s.status,
                           'resolution', CASE WHEN p_status = 'completed' THEN 'output'
                                              ELSE 'retry' END));
    IF r.status = 'failed' AND r.failure_class = 'manual_review' THEN
        -- No longer parked. A queue run goes back to its queue so a worker resumes it; any
        -- other run resumes when it is invoked again.
        UPDATE runs SET failure_class = NULL, updated_at = now(),
                        status = CASE WHEN queue IS NOT NULL THEN 'queued' ELSE status END,
                        run_at = CASE WHEN queue IS NOT NULL THEN now() ELSE run_at END
         WHERE id = p_run_id;
        IF r.queue IS NOT NULL THEN
            PERFORM tidebase_append_event(p_run_id, 'run.requeued',
                jsonb_build_object('reason', 'step resolved', 'step', s.name));
        END IF;
    END IF;
    RETURN jsonb_build_object('id', s.id, 'status', s.status, 'requeued',
                              r.status = 'failed' AND r.queue IS NOT NULL
                              AND r.failure_class = 'manual_review');
END $$;
