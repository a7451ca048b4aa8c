-- Queues, recovery webhooks, the reconciler and cancellation.
--
-- * Queues: enqueue (with exact dedupe), claim (FOR UPDATE SKIP LOCKED, per-queue concurrency
--   and per-minute rate caps under a per-queue advisory lock), queue config and counts.
-- * One requeue rule: tidebase_wire_finish_run (defined here) decides requeue-with-backoff vs
--   fail; tidebase_finish_run (direct mode) delegates to it, and so does the reconciler.
-- * Recovery webhooks: a failed or stalled run with a recovery webhook gets a pending row in
--   recovery_attempts; a sender (tidebase serve, or `tidebase reconcile`) claims due rows, POSTs
--   the signed payload and records the result. At most one successful delivery per run attempt.
-- * The reconciler tick: one replica at a time (pg_try_advisory_xact_lock).

-- ---------------------------------------------------------------------------------------------
-- Tables and columns
-- ---------------------------------------------------------------------------------------------

ALTER TABLE runs ADD COLUMN claimed_at timestamptz;
-- Span context of the span that enqueued the run (each attempt's processing span links to it).
ALTER TABLE runs ADD COLUMN enqueued_trace_id text;
ALTER TABLE runs ADD COLUMN enqueued_span_id text;

-- Dedupe: one queued/running run per (queue, dedupe key).
CREATE UNIQUE INDEX runs_queue_dedupe_idx ON runs (queue, dedupe_key)
    WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running');
CREATE INDEX runs_queue_ready_idx ON runs (queue, priority DESC, run_at) WHERE status = 'queued';
CREATE INDEX runs_running_lease_idx ON runs (lease_expires_at) WHERE status = 'running';
CREATE INDEX runs_deadline_idx ON runs (deadline_at)
    WHERE deadline_at IS NOT NULL AND status IN ('pending', 'queued', 'running');

CREATE TABLE queue_configs (
    queue            text PRIMARY KEY,
    concurrency      integer CHECK (concurrency IS NULL OR concurrency > 0),
    rate_per_minute  integer CHECK (rate_per_minute IS NULL OR rate_per_minute > 0),
    invoke_url       text,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- One row per claim, for the per-minute rate cap (rows older than two minutes are pruned).
CREATE TABLE queue_claims (
    queue       text NOT NULL,
    run_id      text NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX queue_claims_idx ON queue_claims (queue, claimed_at);

-- One row per delivery try of a run's recovery webhook.
-- status: pending (due at next_attempt_at) | sending | delivered | failed.
CREATE TABLE recovery_attempts (
    id               text PRIMARY KEY DEFAULT ('rec_' || replace(gen_random_uuid()::text, '-', '')),
    delivery_id      text NOT NULL UNIQUE
                         DEFAULT ('del_' || replace(gen_random_uuid()::text, '-', '')),
    run_id           text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    run_attempt      integer NOT NULL,
    reason           text NOT NULL,          -- failed | lease_expired | manual
    url              text NOT NULL,
    try_number       integer NOT NULL DEFAULT 1,
    status           text NOT NULL DEFAULT 'pending',
    http_status      integer,
    response_excerpt text,
    error_text       text,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz
);
CREATE INDEX recovery_attempts_run_idx ON recovery_attempts (run_id, created_at);
CREATE INDEX recovery_attempts_due_idx ON recovery_attempts (next_attempt_at)
    WHERE status = 'pending';
-- At most one delivery in flight per run, and one success per run attempt (manual ones aside).
CREATE UNIQUE INDEX recovery_attempts_open_idx ON recovery_attempts (run_id)
    WHERE status IN ('pending', 'sending');
CREATE UNIQUE INDEX recovery_attempts_delivered_idx ON recovery_attempts (run_id, run_attempt)
    WHERE status = 'delivered' AND reason <> 'manual';

-- ---------------------------------------------------------------------------------------------
-- Wire shapes
-- ---------------------------------------------------------------------------------------------

CREATE FUNCTION tidebase_wire_recovery_attempt(a recovery_attempts) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', a.id, 'runId', a.run_id, 'deliveryId', a.delivery_id, 'runAttempt', a.run_attempt,
        'reason', a.reason, 'url', a.url, 'try', a.try_number, 'status', a.status,
        'httpStatus', a.http_status, 'responseExcerpt', a.response_excerpt,
        'error', a.error_text, 'nextAttemptAt', tidebase_iso(a.next_attempt_at),
        'createdAt', tidebase_iso(a.created_at), 'completedAt', tidebase_iso(a.completed_at))
$$;

-- The run detail gains the recovery attempts and the enqueuer's span context (003's detail
-- stays the base, renamed).
ALTER FUNCTION tidebase_wire_run_detail(text) RENAME TO tidebase_wire_run_detail_base;

CREATE FUNCTION tidebase_wire_run_detail(p_run_id text) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT d || jsonb_build_object(
        'recoveryAttempts',
        (SELECT COALESCE(jsonb_agg(tidebase_wire_recovery_attempt(a)
                                   ORDER BY a.created_at, a.id), '[]'::jsonb)
           FROM recovery_attempts a WHERE a.run_id = p_run_id),
        'run', (d -> 'run') || (SELECT jsonb_build_object(
                    'claimedAt', tidebase_iso(r.claimed_at),
                    'enqueuedTraceId', r.enqueued_trace_id,
                    'enqueuedSpanId', r.enqueued_span_id)
                  FROM runs r WHERE r.id = p_run_id))
      FROM tidebase_wire_run_detail_base(p_run_id) AS d
     WHERE d IS NOT NULL
$$;

-- ---------------------------------------------------------------------------------------------
-- Recovery requests
-- ---------------------------------------------------------------------------------------------

-- Queues a recovery delivery for the run's current attempt (the caller holds the run row lock
-- or does not care). Nothing when the run has no webhook, a delivery is already open, the
-- attempt was already delivered (non-manual reasons), or one was requested within
-- p_throttle_ms. Returns the new row's id or NULL.
CREATE FUNCTION tidebase_request_recovery(p_run_id text, p_reason text, p_throttle_ms integer)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    r runs;
    v_id text;
BEGIN
    SELECT * INTO r FROM runs WHERE id = p_run_id;
    IF NOT FOUND OR r.recovery_webhook IS NULL THEN
        RETURN NULL;
    END IF;
    IF p_reason <> 'manual' AND EXISTS (
        SELECT 1 FROM recovery_attempts a
         WHERE a.run_id = p_run_id
           AND ((a.run_attempt = r.attempt AND a.status = 'delivered' AND a.reason <> 'manual')
                OR a.created_at > now() - make_interval(secs => p_throttle_ms / 1000.0))) THEN
        RETURN NULL;
    END IF;
    INSERT INTO recovery_attempts (run_id, run_attempt, reason, url)
    VALUES (p_run_id, r.attempt, p_reason, r.recovery_webhook)
    ON CONFLICT (run_id) WHERE status IN ('pending', 'sending') DO NOTHING
    RETURNING id INTO v_id;
    IF v_id IS NOT NULL THEN
        PERFORM tidebase_append_event(p_run_id, 'recovery.started',
            jsonb_build_object('recoveryAttemptId', v_id, 'reason', p_reason,
                               'attempt', r.attempt));
    END IF;
    RETURN v_id;
END $$;

-- Claims due deliveries (several senders never take the same row): each with the payload to
-- send. A row whose run attempt was delivered meanwhile is dropped instead.
CREATE FUNCTION tidebase_claim_recoveries(p_limit integer, p_run_id text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    a recovery_attempts;
    r runs;
    v_out jsonb := '[]'::jsonb;
BEGIN
    FOR a IN
        SELECT * FROM recovery_attempts
         WHERE status = 'pending' AND (p_run_id IS NULL OR run_id = p_run_id)
           AND (next_attempt_at <= now() OR p_run_id IS NOT NULL)
         ORDER BY next_attempt_at LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    LOOP
        SELECT * INTO r FROM runs WHERE id = a.run_id;
        IF a.reason <> 'manual' AND EXISTS (
            SELECT 1 FROM recovery_attempts d
             WHERE d.run_id = a.run_id AND d.run_attempt = a.run_attempt
               AND d.status = 'delivered' AND d.reason <> 'manual') THEN
            UPDATE recovery_attempts SET status = 'failed', completed_at = now(),
                   error_text = 'skipped: this run attempt was already delivered'
             WHERE id = a.id;
            CONTINUE;
        END IF;
        UPDATE recovery_attempts SET status = 'sending' WHERE id = a.id RETURNING * INTO a;
        v_out := v_out || jsonb_build_array(jsonb_build_object(
            'recoveryAttempt', tidebase_wire_recovery_attempt(a),
            'payload', jsonb_build_object(
                'type', 'tidebase.recovery', 'deliveryId', a.delivery_id, 'runId', r.id,
                'workflowName', r.workflow_name, 'attempt', a.run_attempt,
                'reason', a.reason, 'run', tidebase_wire_run(r))));
    END LOOP;
    RETURN v_out;
END $$;

-- Records the outcome of one delivery try. A failed try with p_retry_ms queues the next try.
CREATE FUNCTION tidebase_record_recovery(
    p_id text, p_delivered boolean, p_http_status integer, p_excerpt text, p_error text,
    p_retry_ms integer)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    a recovery_attempts;
BEGIN
    SELECT * INTO a FROM recovery_attempts WHERE id = p_id AND status = 'sending' FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM 1 FROM runs WHERE id = a.run_id FOR UPDATE;  -- orders the event log
    UPDATE recovery_attempts
       SET status = CASE WHEN p_delivered THEN 'delivered' ELSE 'failed' END,
           http_status = p_http_status, response_excerpt = left(p_excerpt, 1000),
           error_text = left(p_error, 1000), completed_at = now()
     WHERE id = p_id RETURNING * INTO a;
    PERFORM tidebase_append_event(a.run_id,
        CASE WHEN p_delivered THEN 'recovery.delivered' ELSE 'recovery.failed' END,
        jsonb_build_object('recoveryAttemptId', a.id, 'deliveryId', a.delivery_id,
                           'reason', a.reason, 'httpStatus', p_http_status, 'try', a.try_number,
                           'error', p_error));
    IF NOT p_delivered AND p_retry_ms IS NOT NULL THEN
        INSERT INTO recovery_attempts (run_id, run_attempt, reason, url, try_number,
                                       next_attempt_at)
        VALUES (a.run_id, a.run_attempt, a.reason, a.url, a.try_number + 1,
                now() + make_interval(secs => p_retry_ms / 1000.0))
        ON CONFLICT (run_id) WHERE status IN ('pending', 'sending') DO NOTHING;
    END IF;
    RETURN tidebase_wire_recovery_attempt(a);
END $$;

-- ---------------------------------------------------------------------------------------------
-- Finishing a run: one requeue rule, plus recovery of failed webhook runs
-- ---------------------------------------------------------------------------------------------

-- The one requeue rule (replacing 003's version, which had no recovery and requeued runs parked
-- for review). Fenced by the lease when p_owner is given; a cancelled run is never changed.
-- Failing a queue run with attempts left requeues it with backoff 5 s * 2^(attempt-1), at most
-- 5 min; out of attempts it fails with failure_class max_retries (when maxAttempts > 1). A
-- failure parked for review (failure_class manual_review) is never requeued and keeps its class:
-- another attempt would stop at the same step. A run that ends failed with a recovery webhook
-- gets a recovery request, unless parked for review, out of queue attempts, or it has already
-- made max(maxAttempts, 3) attempts (so a deterministic failure is not recovered forever).
CREATE FUNCTION tidebase_wire_finish_run(
    p_run_id text, p_owner text, p_status text, p_result jsonb, p_error jsonb,
    p_failure_class text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    r runs;
    v_class text := p_failure_class;
    v_failed boolean := p_status = 'failed';
    v_parked boolean := p_failure_class IS NOT DISTINCT FROM 'manual_review';
BEGIN
    r := tidebase_lock_run(p_run_id);
    IF r.status = 'cancelled' THEN
        RETURN jsonb_build_object('outcome', 'cancelled', 'run', tidebase_wire_run(r),
                                  'requeued', false);
    END IF;
    IF p_owner IS NOT NULL AND NOT (r.status = 'running' AND r.lease_owner = p_owner) THEN
        IF EXISTS (SELECT 1 FROM run_attempts a
                    WHERE a.run_id = p_run_id AND a.attempt = r.attempt
                      AND a.lease_owner = p_owner AND a.status = p_status) THEN
            RETURN jsonb_build_object('outcome', 'already', 'run', tidebase_wire_run(r),
                                      'requeued', r.status = 'queued');
        END IF;
        RETURN jsonb_build_object('outcome', 'lease_lost', 'run', tidebase_wire_run(r),
                                  'requeued', false);
    END IF;
    IF p_owner IS NULL AND r.status = 'completed' THEN
        RETURN jsonb_build_object('outcome', 'already', 'run', tidebase_wire_run(r),
                                  'requeued', false);
    END IF;
    UPDATE run_attempts SET status = p_status, error = p_error, ended_at = now()
     WHERE run_id = p_run_id AND attempt = r.attempt AND status = 'running';

    IF v_failed AND NOT v_parked AND r.queue IS NOT NULL AND r.attempt < r.max_attempts THEN
        UPDATE runs SET status = 'queued', error = p_error, lease_owner = NULL,
                        lease_expires_at = NULL, updated_at = now(),
                        run_at = now() + make_interval(secs =>
                            least(300000, 5000 * (2 ^ greatest(0, r.attempt - 1))::bigint) / 1000.0)
         WHERE id = p_run_id RETURNING * INTO r;
        PERFORM tidebase_append_event(p_run_id, 'run.requeued',
            jsonb_build_object('error', p_error, 'attempt', r.attempt,
                               'maxAttempts', r.max_attempts, 'nextRunAt', tidebase_iso(r.run_at)));
        SELECT * INTO r FROM runs WHERE id = p_run_id;
        RETURN jsonb_build_object('outcome', 'requeued', 'run', tidebase_wire_run(r),
                                  'requeued', true);
    END IF;
    IF v_failed AND NOT v_parked AND r.queue IS NOT NULL AND r.max_attempts > 1 THEN
        v_class := 'max_retries';
    END IF;
    UPDATE runs
       SET status = p_status,
           result = CASE WHEN v_failed THEN result ELSE p_result END,
           error = CASE WHEN v_failed THEN p_error END,
           failure_class = CASE WHEN v_failed THEN v_class END,
           lease_owner = NULL, lease_expires_at = NULL, updated_at = now(),
           completed_at = CASE WHEN v_failed THEN completed_at ELSE now() END
     WHERE id = p_run_id RETURNING * INTO r;
    PERFORM tidebase_append_event(p_run_id, 'run.' || p_status,
        CASE WHEN v_failed
             THEN jsonb_build_object('attempt', r.attempt, 'error', p_error, 'failureClass', v_class)
             ELSE jsonb_build_object('attempt', r.attempt, 'result', p_result) END);
    SELECT * INTO r FROM runs WHERE id = p_run_id;
    PERFORM tidebase_queue_deliveries(p_run_id, 'run.' || p_status,
        jsonb_build_object('run', tidebase_wire_run(r))
            || CASE WHEN v_failed THEN jsonb_build_object('error', p_error) ELSE '{}'::jsonb END,
        NULL, NULL);
    IF v_failed AND r.recovery_webhook IS NOT NULL
       AND COALESCE(v_class, '') NOT IN ('manual_review', 'max_retries')
       AND r.attempt < greatest(r.max_attempts, 3) THEN
        PERFORM tidebase_request_recovery(p_run_id, 'failed', 0);
    END IF;
    RETURN jsonb_build_object('outcome', p_status, 'run', tidebase_wire_run(r), 'requeued', false);
END $$;

-- Direct mode's finish (002) now goes through the same function as the server, so the requeue
-- rule lives in one place. NULL when the caller does not hold the lease (the store says why).
CREATE FUNCTION tidebase_finish_run(
    p_run_id text, p_owner text, p_status text, p_result jsonb, p_error jsonb,
    p_failure_class text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v jsonb;
BEGIN
    v := tidebase_wire_finish_run(p_run_id, p_owner, p_status, p_result, p_error,
                                  p_failure_class);
    IF v ->> 'outcome' IN ('lease_lost', 'cancelled') THEN
        RETURN NULL;
    END IF;
    RETURN v;
END $$;

-- Sets the recovery webhook of a run (tide.run(..., recovery_webhook=...)).
CREATE FUNCTION tidebase_set_recovery_webhook(p_run_id text, p_url text) RETURNS void
LANGUAGE sql AS $$
    UPDATE runs SET recovery_webhook = p_url, updated_at = now()
     WHERE id = p_run_id AND recovery_webhook IS DISTINCT FROM p_url
$$;

-- ---------------------------------------------------------------------------------------------
-- Queues
-- ---------------------------------------------------------------------------------------------

-- Enqueues a run, or returns the queued/running run holding the same dedupe key. Exact under
-- concurrent enqueues: the partial unique index decides, and a conflicting insert waits for the
-- other transaction.
CREATE FUNCTION tidebase_enqueue(
    p_queue text, p_workflow text, p_input jsonb, p_metadata jsonb, p_recovery_webhook text,
    p_channels jsonb, p_dedupe_key text, p_run_at timestamptz, p_delay_ms bigint,
    p_max_attempts integer, p_priority integer, p_deadline_ms bigint, p_trace_id text,
    p_span_id text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    r runs;
    v_id text := 'run_' || replace(gen_random_uuid()::text, '-', '');
BEGIN
    IF p_max_attempts IS NOT NULL AND p_max_attempts < 1 THEN
        RAISE EXCEPTION 'maxAttempts must be at least 1' USING ERRCODE = 'TB400';
    END IF;
    LOOP
        INSERT INTO runs (id, workflow_name, input, metadata, recovery_webhook, status, queue,
                          dedupe_key, priority, run_at, max_attempts, deadline_at,
                          enqueued_trace_id, enqueued_span_id)
        VALUES (v_id, p_workflow, COALESCE(p_input, '{}'::jsonb),
                COALESCE(p_metadata, '{}'::jsonb), p_recovery_webhook, 'queued', p_queue,
                p_dedupe_key, COALESCE(p_priority, 0),
                COALESCE(p_run_at, now()) + make_interval(secs => COALESCE(p_delay_ms, 0) / 1000.0),
                COALESCE(p_max_attempts, 1),
                CASE WHEN p_deadline_ms IS NOT NULL
                     THEN now() + make_interval(secs => p_deadline_ms / 1000.0) END,
                p_trace_id, p_span_id)
        ON CONFLICT (queue, dedupe_key)
           WHERE dedupe_key IS NOT NULL AND status IN ('queued', 'running') DO NOTHING
        RETURNING * INTO r;
        IF FOUND THEN
            PERFORM tidebase_add_channels(r.id, p_channels);
            PERFORM tidebase_append_event(r.id, 'run.created',
                jsonb_build_object('workflowName', p_workflow,
                                   'input', COALESCE(p_input, '{}'::jsonb),
                                   'channels', tidebase_channel_summary(p_channels)));
            PERFORM tidebase_append_event(r.id, 'run.enqueued',
                jsonb_build_object('queue', p_queue, 'dedupeKey', p_dedupe_key,
                                   'runAt', tidebase_iso(r.run_at), 'priority', r.priority,
                                   'maxAttempts', r.max_attempts));
            SELECT * INTO r FROM runs WHERE id = r.id;
            RETURN jsonb_build_object('run', tidebase_wire_run(r), 'deduplicated', false);
        END IF;
        SELECT * INTO r FROM runs
         WHERE queue = p_queue AND dedupe_key = p_dedupe_key AND status IN ('queued', 'running');
        IF FOUND THEN
            RETURN jsonb_build_object('run', tidebase_wire_run(r), 'deduplicated', true);
        END IF;
        -- the holder finished between our insert and our read: try again
    END LOOP;
END $$;

-- Claims up to p_limit ready runs from the queues (in name order), honouring each queue's
-- concurrency cap and per-minute rate. Claimed runs are running under p_owner with a new
-- attempt; tidebase_begin_run by the same owner then continues that attempt.
CREATE FUNCTION tidebase_claim(p_queues text[], p_owner text, p_limit integer, p_lease_ms integer)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    q text;
    c queue_configs;
    r runs;
    v_room integer;
    v_left integer := p_limit;
    v_out jsonb := '[]'::jsonb;
BEGIN
    FOR q IN SELECT DISTINCT unnest(p_queues) ORDER BY 1 LOOP
        EXIT WHEN v_left <= 0;
        PERFORM pg_advisory_xact_lock(hashtextextended('tidebase.queue:' || q, 0));
        SELECT * INTO c FROM queue_configs WHERE queue = q;
        v_room := v_left;
        IF c.concurrency IS NOT NULL THEN
            v_room := least(v_room, c.concurrency
                - (SELECT count(*) FROM runs WHERE queue = q AND status = 'running')::integer);
        END IF;
        IF c.rate_per_minute IS NOT NULL THEN
            DELETE FROM queue_claims WHERE queue = q AND claimed_at < now() - interval '2 minutes';
            v_room := least(v_room, c.rate_per_minute
                - (SELECT count(*) FROM queue_claims
                    WHERE queue = q AND claimed_at > now() - interval '1 minute')::integer);
        END IF;
        CONTINUE WHEN v_room <= 0;
        FOR r IN
            SELECT * FROM runs
             WHERE queue = q AND status = 'queued' AND run_at <= now()
               AND (deadline_at IS NULL OR deadline_at > now())
             ORDER BY priority DESC, run_at ASC, id
             LIMIT v_room
               FOR UPDATE SKIP LOCKED
        LOOP
            UPDATE runs SET status = 'running', attempt = attempt + 1, lease_owner = p_owner,
                            lease_expires_at = now() + make_interval(secs => p_lease_ms / 1000.0),
                            claimed_at = now(), updated_at = now()
             WHERE id = r.id RETURNING * INTO r;
            UPDATE run_attempts SET status = 'abandoned', ended_at = now()
             WHERE run_id = r.id AND status = 'running';
            IF c.rate_per_minute IS NOT NULL THEN
                INSERT INTO queue_claims (queue, run_id) VALUES (q, r.id);
            END IF;
            PERFORM tidebase_append_event(r.id, 'run.claimed',
                jsonb_build_object('attempt', r.attempt, 'leaseOwner', p_owner, 'queue', q));
            SELECT * INTO r FROM runs WHERE id = r.id;
            v_out := v_out || jsonb_build_array(tidebase_wire_run(r) || jsonb_build_object(
                'claimedAt', tidebase_iso(r.claimed_at),
                'enqueuedTraceId', r.enqueued_trace_id, 'enqueuedSpanId', r.enqueued_span_id));
            v_left := v_left - 1;
        END LOOP;
    END LOOP;
    RETURN jsonb_build_object('runs', v_out, 'leaseOwner', p_owner);
END $$;

CREATE FUNCTION tidebase_wire_queue_config(c queue_configs) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('queue', c.queue, 'concurrency', c.concurrency,
                              'ratePerMinute', c.rate_per_minute, 'invokeUrl', c.invoke_url,
                              'updatedAt', tidebase_iso(c.updated_at))
$$;

-- PUT semantics: the given settings replace the queue's (NULL: no cap).
CREATE FUNCTION tidebase_set_queue_config(
    p_queue text, p_concurrency integer, p_rate_per_minute integer, p_invoke_url text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    c queue_configs;
BEGIN
    IF p_concurrency IS NOT NULL AND p_concurrency < 1
       OR p_rate_per_minute IS NOT NULL AND p_rate_per_minute < 1 THEN
        RAISE EXCEPTION 'concurrency and ratePerMinute must be at least 1' USING ERRCODE = 'TB400';
    END IF;
    INSERT INTO queue_configs (queue, concurrency, rate_per_minute, invoke_url)
    VALUES (p_queue, p_concurrency, p_rate_per_minute, p_invoke_url)
    ON CONFLICT (queue) DO UPDATE
       SET concurrency = EXCLUDED.concurrency, rate_per_minute = EXCLUDED.rate_per_minute,
           invoke_url = EXCLUDED.invoke_url, updated_at = now()
    RETURNING * INTO c;
    RETURN jsonb_build_object('config', tidebase_wire_queue_config(c));
END $$;

-- Every queue that has runs or a config: counts by status, ready count, config.
CREATE FUNCTION tidebase_queues() RETURNS jsonb LANGUAGE sql STABLE AS $$
    WITH names AS (
        SELECT DISTINCT queue FROM runs WHERE queue IS NOT NULL
        UNION SELECT queue FROM queue_configs
    )
    SELECT jsonb_build_object('queues', COALESCE(jsonb_agg(jsonb_build_object(
        'queue', n.queue,
        'counts', (SELECT COALESCE(jsonb_object_agg(status, cnt), '{}'::jsonb)
                     FROM (SELECT status, count(*) AS cnt FROM runs
                            WHERE queue = n.queue GROUP BY status) s),
        'ready', (SELECT count(*) FROM runs
                   WHERE queue = n.queue AND status = 'queued' AND run_at <= now()),
        'config', (SELECT tidebase_wire_queue_config(c) FROM queue_configs c
                    WHERE c.queue = n.queue)) ORDER BY n.queue), '[]'::jsonb))
      FROM names n
$$;

-- ---------------------------------------------------------------------------------------------
-- The reconciler
-- ---------------------------------------------------------------------------------------------

-- One tick, at most one replica at a time (the others return ran=false at once):
-- 1. queue runs whose lease expired go through the one requeue rule (requeued with backoff, or
--    failed with max_retries once out of attempts);
-- 2. other running runs with a recovery webhook and an expired lease get a recovery request
--    (throttled by p_throttle_ms per run);
-- 3. runs past their deadline are cancelled with reason `deadline`.
CREATE FUNCTION tidebase_reconcile(p_limit integer, p_throttle_ms integer)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    r runs;
    v jsonb;
    v_requeued jsonb := '[]'::jsonb;
    v_failed jsonb := '[]'::jsonb;
    v_recover jsonb := '[]'::jsonb;
    v_cancelled jsonb := '[]'::jsonb;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtextextended('tidebase.reconciler', 0)) THEN
        RETURN jsonb_build_object('ran', false);
    END IF;
    FOR r IN
        SELECT * FROM runs
         WHERE status = 'running' AND queue IS NOT NULL AND lease_expires_at < now()
         ORDER BY lease_expires_at LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    LOOP
        v := tidebase_wire_finish_run(r.id, r.lease_owner, 'failed', NULL,
            jsonb_build_object('name', 'LeaseExpired',
                               'message', 'the worker''s lease expired (it died or stalled) '
                                          || 'during attempt ' || r.attempt),
            'max_retries');
        IF v ->> 'outcome' = 'requeued' THEN
            v_requeued := v_requeued || to_jsonb(r.id);
        ELSIF v ->> 'outcome' = 'failed' THEN
            v_failed := v_failed || to_jsonb(r.id);
        END IF;
    END LOOP;
    FOR r IN
        SELECT * FROM runs
         WHERE status = 'running' AND queue IS NULL AND recovery_webhook IS NOT NULL
           AND lease_expires_at < now()
         ORDER BY lease_expires_at LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    LOOP
        IF tidebase_request_recovery(r.id, 'lease_expired', p_throttle_ms) IS NOT NULL THEN
            v_recover := v_recover || to_jsonb(r.id);
        END IF;
    END LOOP;
    FOR r IN
        SELECT * FROM runs
         WHERE deadline_at < now() AND status IN ('pending', 'queued', 'running')
         ORDER BY deadline_at LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    LOOP
        PERFORM tidebase_wire_cancel_run(r.id, 'deadline', 'reconciler');
        v_cancelled := v_cancelled || to_jsonb(r.id);
    END LOOP;
    RETURN jsonb_build_object('ran', true, 'requeued', v_requeued, 'failed', v_failed,
                              'recoveryRequested', v_recover, 'deadlineCancelled', v_cancelled);
END $$;

-- ---------------------------------------------------------------------------------------------
-- Releasing an interrupted attempt
-- ---------------------------------------------------------------------------------------------

-- An interrupted worker (cancelled task, SIGTERM past the grace period) gives its lease up: a
-- plain run keeps its status with the lease expired now (the next invocation resumes at once); a
-- queue run goes back to `queued`, ready now, so another worker claims it at once (the interrupted
-- attempt still counts toward maxAttempts). Returns the attempt released, or NULL.
CREATE FUNCTION tidebase_release_run(p_run_id text, p_owner text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r runs;
BEGIN
    SELECT * INTO r FROM runs
     WHERE id = p_run_id AND lease_owner = p_owner AND status = 'running' FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF r.queue IS NULL THEN
        UPDATE runs SET lease_expires_at = now(), updated_at = now() WHERE id = p_run_id;
    ELSE
        UPDATE runs SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL,
                        run_at = now(), updated_at = now()
         WHERE id = p_run_id;
        PERFORM tidebase_append_event(p_run_id, 'run.requeued',
            jsonb_build_object('attempt', r.attempt, 'reason', 'released',
                               'nextRunAt', tidebase_iso(now())));
    END IF;
    UPDATE run_attempts SET status = 'interrupted', ended_at = now()
     WHERE run_id = p_run_id AND attempt = r.attempt;
    RETURN r.attempt;
END $$;
