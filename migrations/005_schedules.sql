-- Schedules: a cron expression that enqueues a run on a queue when it is due.
--
-- * Cron expressions are parsed and next run times computed by the application (croniter, in
--   UTC); the database stores the result in next_run_at.
-- * The reconciler fires a due schedule with tidebase_fire_schedule: the UPDATE is fenced by the
--   due time it read (next_run_at = p_due), so of several replicas ticking at once exactly one
--   moves next_run_at on and enqueues, in the same transaction, with the dedupe key
--   `schedule:<name>:<due>`. Missed intervals are not caught up: next_run_at jumps to the first
--   fire time after now.

CREATE TABLE schedules (
    name          text PRIMARY KEY,
    cron          text NOT NULL,
    queue         text NOT NULL,
    workflow_name text NOT NULL,
    input         jsonb,
    metadata      jsonb,
    max_attempts  integer CHECK (max_attempts IS NULL OR max_attempts > 0),
    priority      integer,
    enabled       boolean NOT NULL DEFAULT true,
    next_run_at   timestamptz NOT NULL,
    last_run_at   timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX schedules_due_idx ON schedules (next_run_at) WHERE enabled;

CREATE FUNCTION tidebase_wire_schedule(s schedules) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'name', s.name, 'cron', s.cron, 'queue', s.queue, 'workflowName', s.workflow_name,
        'input', s.input, 'metadata', s.metadata, 'maxAttempts', s.max_attempts,
        'priority', s.priority, 'enabled', s.enabled,
        'nextRunAt', tidebase_iso(s.next_run_at), 'lastRunAt', tidebase_iso(s.last_run_at),
        'createdAt', tidebase_iso(s.created_at), 'updatedAt', tidebase_iso(s.updated_at))
$$;

-- PUT semantics: the given settings replace the schedule's. An enabled schedule whose cron did
-- not change keeps its next_run_at (a PUT never skips or repeats a due run); otherwise
-- next_run_at becomes p_next_run_at (computed by the caller from the cron expression).
CREATE FUNCTION tidebase_put_schedule(
    p_name text, p_cron text, p_queue text, p_workflow text, p_input jsonb, p_metadata jsonb,
    p_max_attempts integer, p_priority integer, p_enabled boolean, p_next_run_at timestamptz)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    s schedules;
    v_created boolean;
BEGIN
    IF p_max_attempts IS NOT NULL AND p_max_attempts < 1 THEN
        RAISE EXCEPTION 'maxAttempts must be at least 1' USING ERRCODE = 'TB400';
    END IF;
    INSERT INTO schedules AS t (name, cron, queue, workflow_name, input, metadata, max_attempts,
                                priority, enabled, next_run_at)
    VALUES (p_name, p_cron, p_queue, p_workflow, p_input, p_metadata, p_max_attempts,
            p_priority, p_enabled, p_next_run_at)
    ON CONFLICT (name) DO UPDATE
       SET cron = EXCLUDED.cron, queue = EXCLUDED.queue, workflow_name = EXCLUDED.workflow_name,
           input = EXCLUDED.input, metadata = EXCLUDED.metadata,
           max_attempts = EXCLUDED.max_attempts, priority = EXCLUDED.priority,
           enabled = EXCLUDED.enabled,
           next_run_at = CASE WHEN t.enabled AND EXCLUDED.enabled AND t.cron = EXCLUDED.cron
                              THEN t.next_run_at ELSE EXCLUDED.next_run_at END,
           updated_at = now()
    RETURNING (xmax = 0) INTO v_created;
    SELECT * INTO s FROM schedules WHERE name = p_name;
    RETURN jsonb_build_object('schedule', tidebase_wire_schedule(s), 'created', v_created);
END $$;

-- Fires a due schedule once: moves next_run_at from p_due to p_next (fenced: NULL when another
-- replica already fired this due time, or the schedule was changed, disabled or deleted) and
-- enqueues its run in the same transaction. Returns the enqueue result ({run, deduplicated}).
CREATE FUNCTION tidebase_fire_schedule(p_name text, p_due timestamptz, p_next timestamptz)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    s schedules;
BEGIN
    UPDATE schedules SET next_run_at = p_next, last_run_at = now()
     WHERE name = p_name AND next_run_at = p_due AND enabled
    RETURNING * INTO s;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN tidebase_enqueue(
        s.queue, s.workflow_name, s.input,
        COALESCE(s.metadata, '{}'::jsonb) || jsonb_build_object(
            'schedule', jsonb_build_object('name', s.name, 'dueAt', tidebase_iso(p_due))),
        NULL, NULL, 'schedule:' || s.name || ':' || tidebase_iso(p_due), NULL, NULL,
        s.max_attempts, s.priority, NULL, NULL, NULL);
END $$;
