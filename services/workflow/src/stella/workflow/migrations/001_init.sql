-- Workflow service schema: template versions, runs (each pinned to one template version) and step runs.

-- One row per template version. Built-in templates have tenant_id NULL and a name-based id that is the
-- same on every installation; a version's definition never changes once stored, so a run that pins it
-- always replays the same graph.
CREATE TABLE templates (
    id          uuid PRIMARY KEY,
    tenant_id   uuid,
    name        text        NOT NULL,
    version     integer     NOT NULL CHECK (version >= 1),
    description text        NOT NULL DEFAULT '',
    definition  jsonb       NOT NULL,
    is_builtin  boolean     GENERATED ALWAYS AS (tenant_id IS NULL) STORED,
    created_at  timestamptz NOT NULL,
    CONSTRAINT templates_version_unique UNIQUE NULLS NOT DISTINCT (tenant_id, name, version)
);

CREATE INDEX templates_by_name ON templates (tenant_id, name, version DESC);

CREATE FUNCTION templates_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'workflow template % version % is immutable', OLD.name, OLD.version
        USING ERRCODE = 'check_violation';
END;
$$;

CREATE TRIGGER templates_immutable BEFORE UPDATE ON templates FOR EACH ROW EXECUTE FUNCTION templates_immutable();

CREATE TABLE runs (
    id               uuid PRIMARY KEY,
    tenant_id        uuid        NOT NULL,
    template_id      uuid        NOT NULL REFERENCES templates (id),
    template_name    text        NOT NULL,
    template_version integer     NOT NULL,
    subject_id       uuid,
    correlation_id   uuid        NOT NULL,
    status           text        NOT NULL
                     CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    inputs           jsonb       NOT NULL,
    context          jsonb       NOT NULL DEFAULT '{}',
    outputs          jsonb       NOT NULL DEFAULT '{}',
    error            text,
    created_at       timestamptz NOT NULL,
    started_at       timestamptz,
    completed_at     timestamptz,
    -- When the run next needs attention without an outside message (a retry due, a step deadline, a
    -- timer); the timer sleeps until the smallest one instead of polling runs.
    next_wakeup_at   timestamptz,
    updated_at       timestamptz NOT NULL
);

CREATE INDEX runs_next_wakeup ON runs (next_wakeup_at) WHERE next_wakeup_at IS NOT NULL;
CREATE INDEX runs_by_subject ON runs (tenant_id, subject_id) WHERE subject_id IS NOT NULL;
CREATE INDEX runs_by_template ON runs (template_id);

-- The state of one template node in one run: its latest attempt.
CREATE TABLE step_runs (
    id             uuid        NOT NULL UNIQUE,
    tenant_id      uuid        NOT NULL,
    run_id         uuid        NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    node_id        text        NOT NULL,
    position       integer     NOT NULL,
    status         text        NOT NULL
                   CHECK (status IN ('pending', 'running', 'waiting', 'succeeded', 'failed', 'skipped', 'cancelled')),
    attempt_number integer     NOT NULL DEFAULT 0 CHECK (attempt_number >= 0),
    started_at     timestamptz,
    finished_at    timestamptz,
    resume_at      timestamptz,
    inputs         jsonb       NOT NULL DEFAULT '{}',
    outputs        jsonb       NOT NULL DEFAULT '{}',
    error          text,
    skip_reason    text,
    logs           text        NOT NULL DEFAULT '',
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (run_id, node_id)
);
