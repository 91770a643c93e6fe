-- Deployment service schema: targets, agents and their registration tokens, jobs and their tasks, task logs,
-- stickers written on targets and drift found on them. Every row carries its tenant; every query filters by it.

CREATE TABLE targets (
    tenant_id          uuid        NOT NULL,
    id                 uuid        NOT NULL,
    environment_id     uuid        NOT NULL,
    name               text        NOT NULL,
    target_type        text        NOT NULL CHECK (target_type IN ('docker_host', 'compose_host')),
    connection         jsonb       NOT NULL DEFAULT '{}',
    labels             jsonb       NOT NULL DEFAULT '{}',
    health_check       jsonb,
    -- The agent the target is pinned to; NULL: any capable agent of the tenant may serve it.
    agent_id           uuid,
    health_status      text        NOT NULL DEFAULT 'unknown'
                                   CHECK (health_status IN ('unknown', 'healthy', 'unhealthy')),
    -- {component name: digest} the last successful task left running, and the full component specs.
    current            jsonb       NOT NULL DEFAULT '{}',
    current_components jsonb       NOT NULL DEFAULT '[]',
    current_release_id uuid,
    current_release_name text,
    drift_detected     boolean     NOT NULL DEFAULT false,
    last_drift         jsonb,
    sticker            jsonb,
    last_inspected_at  timestamptz,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT targets_name_per_environment UNIQUE (tenant_id, environment_id, name)
);

CREATE TABLE agent_tokens (
    tenant_id      uuid        NOT NULL,
    id             uuid        NOT NULL,
    token_hash     bytea       NOT NULL UNIQUE,
    labels         jsonb       NOT NULL DEFAULT '{}',
    created_by     uuid,
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    used_at        timestamptz,
    used_by        uuid,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE agents (
    tenant_id         uuid        NOT NULL,
    id                uuid        NOT NULL,
    name              text        NOT NULL,
    version           text        NOT NULL,
    capabilities      text[]      NOT NULL,
    labels            jsonb       NOT NULL DEFAULT '{}',
    credential_hash   bytea       NOT NULL,
    status            text        NOT NULL CHECK (status IN ('online', 'degraded', 'offline', 'revoked')),
    checks            jsonb       NOT NULL DEFAULT '[]',
    last_heartbeat_at timestamptz,
    registered_at     timestamptz NOT NULL,
    revoked_at        timestamptz,
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT agents_revoked CHECK ((status = 'revoked') = (revoked_at IS NOT NULL))
);

-- One live agent per name in a tenant; a revoked agent's name may be registered again.
CREATE UNIQUE INDEX agents_live_name ON agents (tenant_id, name) WHERE status <> 'revoked';
-- The heartbeat timer reads the oldest heartbeat of agents still counted as alive.
CREATE INDEX agents_alive_heartbeat ON agents (last_heartbeat_at) WHERE status IN ('online', 'degraded');

CREATE TABLE jobs (
    tenant_id        uuid        NOT NULL,
    id               uuid        NOT NULL,
    kind             text        NOT NULL
                                 CHECK (kind IN ('deploy', 'rollback', 'remediate', 'health-check', 'verify-drift')),
    promotion_id     uuid,
    release_id       uuid        NOT NULL,
    release_name     text        NOT NULL,
    environment_id   uuid        NOT NULL,
    environment_name text        NOT NULL,
    strategy         text        NOT NULL CHECK (strategy IN ('all-at-once', 'rolling', 'canary', 'blue-green')),
    spec             jsonb       NOT NULL,
    status           text        NOT NULL CHECK (status IN ('pending', 'running', 'paused', 'rolling_back',
                                                            'succeeded', 'failed', 'rolled_back', 'cancelled')),
    rollback_of      uuid,
    reason           text        NOT NULL DEFAULT '',
    target_count     integer     NOT NULL DEFAULT 0,
    batch_count      integer     NOT NULL DEFAULT 0,
    current_batch    integer     NOT NULL DEFAULT 0,
    -- When the next batch may start (a pause between batches or canary steps).
    next_batch_at    timestamptz,
    -- Blue-green: the group the job deploys and switches to, and the group that was active before.
    switch_to        text,
    switch_from      text,
    -- The workflow step attempt the job answers when it ends.
    step_run_id      uuid,
    step_node_id     text,
    step_attempt     integer,
    step_key         text,
    correlation_id   uuid        NOT NULL,
    created_by       uuid,
    created_at       timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz,
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT jobs_finished CHECK (
        (status IN ('succeeded', 'failed', 'rolled_back', 'cancelled')) = (finished_at IS NOT NULL)
    )
);

-- A workflow step attempt starts one job, however often its command is delivered.
CREATE UNIQUE INDEX jobs_step ON jobs (tenant_id, step_key) WHERE step_key IS NOT NULL;
-- One job changing an environment at a time (health checks and inspections change nothing and may overlap).
CREATE UNIQUE INDEX jobs_one_active_per_environment ON jobs (tenant_id, environment_id)
    WHERE status IN ('running', 'paused', 'rolling_back') AND kind IN ('deploy', 'rollback', 'remediate');
CREATE INDEX jobs_list ON jobs (tenant_id, created_at DESC, id DESC);
CREATE INDEX jobs_promotion ON jobs (tenant_id, promotion_id, created_at DESC) WHERE promotion_id IS NOT NULL;
CREATE INDEX jobs_unfinished ON jobs (tenant_id, environment_id, created_at) WHERE finished_at IS NULL;
CREATE INDEX jobs_next_batch ON jobs (next_batch_at) WHERE next_batch_at IS NOT NULL AND finished_at IS NULL;

CREATE TABLE tasks (
    tenant_id        uuid        NOT NULL,
    id               uuid        NOT NULL,
    job_id           uuid,
    target_id        uuid        NOT NULL,
    target_name      text        NOT NULL,
    type             text        NOT NULL CHECK (type IN ('deploy', 'rollback', 'health-check', 'inspect',
                                                          'write-sticker', 'read-sticker')),
    batch            integer     NOT NULL DEFAULT 0,
    status           text        NOT NULL CHECK (status IN ('pending', 'assigned', 'running', 'succeeded', 'failed',
                                                            'timed_out', 'cancelled')),
    attempt          integer     NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    idempotency_key  text        NOT NULL,
    -- Capability an agent needs for the task (docker or compose), and the agent a pinned target names.
    capability       text        NOT NULL,
    pinned_agent_id  uuid,
    agent_id         uuid,
    -- Released: the job lets agents lease it (NULL: planned for a later batch).
    released_at      timestamptz,
    leased_at        timestamptz,
    lease_expires_at timestamptz,
    deadline_at      timestamptz,
    timeout_s        double precision NOT NULL,
    -- The AgentTask body without its lease fields (task_id, attempt, lease_expires_at are added per lease).
    body             jsonb       NOT NULL,
    components       jsonb       NOT NULL DEFAULT '[]',
    -- What ran on the target before this task ({release_id, release_name, components}): a rollback's target.
    previous         jsonb,
    error_code       text,
    message          text        NOT NULL DEFAULT '',
    result           jsonb,
    artifacts        jsonb       NOT NULL DEFAULT '[]',
    log_lines        integer     NOT NULL DEFAULT 0,
    logs_truncated   boolean     NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz,
    PRIMARY KEY (tenant_id, id)
);

CREATE INDEX tasks_of_job ON tasks (tenant_id, job_id, batch);
-- The lease query: released, pending tasks, oldest first.
CREATE INDEX tasks_leasable ON tasks (tenant_id, released_at) WHERE status = 'pending' AND released_at IS NOT NULL;
CREATE INDEX tasks_of_agent ON tasks (tenant_id, agent_id) WHERE status IN ('assigned', 'running');
-- The timers: leases that expire and tasks that reach their deadline.
CREATE INDEX tasks_lease_expiry ON tasks (lease_expires_at) WHERE status IN ('assigned', 'running');
CREATE INDEX tasks_deadline ON tasks (deadline_at) WHERE status IN ('pending', 'assigned', 'running');
CREATE INDEX tasks_of_target ON tasks (tenant_id, target_id, created_at DESC);

-- Log chunks, one row per (task, attempt, seq), so a chunk sent twice is stored once; bounded per task.
CREATE TABLE task_logs (
    tenant_id  uuid        NOT NULL,
    task_id    uuid        NOT NULL,
    attempt    integer     NOT NULL,
    seq        integer     NOT NULL,
    lines      text[]      NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, task_id, attempt, seq)
);

-- Every sticker a task wrote (the target row keeps the latest).
CREATE TABLE stickers (
    tenant_id      uuid        NOT NULL,
    id             uuid        NOT NULL,
    target_id      uuid        NOT NULL,
    release_id     uuid,
    promotion_id   uuid,
    job_id         uuid,
    task_id        uuid        NOT NULL,
    content        jsonb       NOT NULL,
    content_hash   text        NOT NULL,
    written_at     timestamptz NOT NULL,
    drift_detected boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, task_id)
);

CREATE TABLE drift_records (
    tenant_id     uuid        NOT NULL,
    id            uuid        NOT NULL,
    target_id     uuid        NOT NULL,
    task_id       uuid        NOT NULL,
    release_id    uuid,
    drifted       boolean     NOT NULL,
    sticker_found boolean     NOT NULL,
    differences   jsonb       NOT NULL,
    detected_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, task_id)
);

CREATE INDEX drift_records_of_target ON drift_records (tenant_id, target_id, detected_at DESC);

-- Blue-green: which label group of an environment serves.
CREATE TABLE environment_groups (
    tenant_id      uuid        NOT NULL,
    environment_id uuid        NOT NULL,
    active_group   text        NOT NULL,
    switched_at    timestamptz NOT NULL,
    job_id         uuid        NOT NULL,
    PRIMARY KEY (tenant_id, environment_id)
);
