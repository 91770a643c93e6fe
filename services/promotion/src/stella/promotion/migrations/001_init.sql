-- Promotion service schema: environments and their freeze windows, scan verdicts, promotions and the
-- decision records (with the inputs they were computed from).

CREATE TABLE environments (
    id                 uuid PRIMARY KEY,
    tenant_id          uuid        NOT NULL,
    name               text        NOT NULL,
    display_name       text        NOT NULL,
    order_index        integer     NOT NULL CHECK (order_index >= 0),
    required_approvals integer     NOT NULL CHECK (required_approvals BETWEEN 0 AND 50),
    require_sod        boolean     NOT NULL,
    config             jsonb       NOT NULL,
    promotion_policy   jsonb       NOT NULL,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    CONSTRAINT environments_name_unique UNIQUE (tenant_id, name)
);

CREATE INDEX environments_by_order ON environments (tenant_id, order_index, name);

-- A window's validated definition is kept as the freeze module writes it; the columns beside it serve
-- the freeze timer: it sleeps until min(next_transition_at) and emits the transitions of each due window
-- since its watermark (transitions_seen_until), then moves both forward in the same transaction.
CREATE TABLE freeze_windows (
    id                     uuid PRIMARY KEY,
    tenant_id              uuid        NOT NULL,
    environment_id         uuid        NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    kind                   text        NOT NULL CHECK (kind IN ('deny', 'allow')),
    definition             jsonb       NOT NULL,
    created_by             uuid,
    created_at             timestamptz NOT NULL,
    transitions_seen_until timestamptz NOT NULL,
    next_transition_at     timestamptz
);

CREATE INDEX freeze_windows_by_environment ON freeze_windows (tenant_id, environment_id, created_at, id);
CREATE INDEX freeze_windows_next_transition ON freeze_windows (next_transition_at)
    WHERE next_transition_at IS NOT NULL;

-- The latest scan verdict of each image digest: what the security gate reads.
CREATE TABLE scan_results (
    tenant_id   uuid             NOT NULL,
    digest      text             NOT NULL CHECK (digest ~ '^sha256:[0-9a-f]{64}$'),
    critical    integer          NOT NULL CHECK (critical >= 0),
    high        integer          NOT NULL CHECK (high >= 0),
    medium      integer          NOT NULL CHECK (medium >= 0),
    low         integer          NOT NULL CHECK (low >= 0),
    max_epss    double precision NOT NULL CHECK (max_epss BETWEEN 0 AND 1),
    kev         boolean          NOT NULL,
    scanner     text             NOT NULL,
    scanned_at  timestamptz      NOT NULL,
    recorded_at timestamptz      NOT NULL,
    PRIMARY KEY (tenant_id, digest)
);

CREATE TABLE promotions (
    id                      uuid PRIMARY KEY,
    tenant_id               uuid        NOT NULL,
    release_id              uuid        NOT NULL,
    release_name            text        NOT NULL,
    release_components      jsonb       NOT NULL,
    source_environment_id   uuid REFERENCES environments (id),
    target_environment_id   uuid        NOT NULL REFERENCES environments (id),
    target_environment_name text        NOT NULL,
    status                  text        NOT NULL CHECK (status IN ('pending_gate', 'pending_approval', 'approved',
                                                                   'deploying', 'deployed', 'rejected', 'cancelled',
                                                                   'failed', 'rolled_back')),
    reason                  text        NOT NULL,
    requested_by            text        NOT NULL,
    requested_at            timestamptz NOT NULL,
    updated_at              timestamptz NOT NULL,
    version                 integer     NOT NULL,
    -- The environment's approval and freeze settings, copied when the promotion was requested.
    required_approvals      integer     NOT NULL,
    require_sod             boolean     NOT NULL,
    approver_groups         jsonb       NOT NULL,
    freeze_behavior         text        NOT NULL CHECK (freeze_behavior IN ('hold', 'reject')),
    approval_timeout_s      integer     NOT NULL,
    decision_id             uuid,
    decision_record         jsonb,
    reason_codes            text[]      NOT NULL,
    status_message          text,
    -- Set while a closed window holds the promotion in pending_gate: the hold timer re-evaluates it then.
    next_evaluation_at      timestamptz,
    approval_deadline       timestamptz,
    approvals_granted_at    timestamptz,
    approved_at             timestamptz,
    deployment_job_id       uuid,
    rollback_job_id         uuid,
    rollback_succeeded      boolean,
    finished_at             timestamptz,
    cancelled_by            text,
    workflow_template       text        NOT NULL,
    workflow_run_id         uuid        NOT NULL,
    -- The workflow gate step attempt waiting on this promotion's gates (completed when they decide).
    gate_step               jsonb,
    freeze_override         jsonb,
    correlation_id          uuid        NOT NULL
);

CREATE INDEX promotions_by_recency ON promotions (tenant_id, requested_at DESC, id DESC);
CREATE INDEX promotions_by_status ON promotions (tenant_id, status, requested_at DESC, id DESC);
CREATE INDEX promotions_by_release ON promotions (tenant_id, release_id, requested_at DESC, id DESC);
CREATE INDEX promotions_by_environment ON promotions (tenant_id, target_environment_id, requested_at DESC, id DESC);
CREATE INDEX promotions_by_source ON promotions (tenant_id, source_environment_id)
    WHERE source_environment_id IS NOT NULL;
CREATE INDEX promotions_held ON promotions (next_evaluation_at) WHERE next_evaluation_at IS NOT NULL;

-- The database keeps the rules the domain enforces true whatever code runs against the table: a release
-- has at most one unfinished promotion per environment, and an environment deploys one promotion at a time.
CREATE UNIQUE INDEX promotions_one_active ON promotions (tenant_id, release_id, target_environment_id)
    WHERE status IN ('pending_gate', 'pending_approval', 'approved', 'deploying');
CREATE UNIQUE INDEX promotions_one_deploying ON promotions (tenant_id, target_environment_id)
    WHERE status = 'deploying';

-- Every decision a promotion received, with the inputs and clock reading it was computed from, so that
-- it can be replayed: record_json is the record's canonical JSON (RFC 8785), compared byte for byte.
CREATE TABLE decisions (
    id           uuid PRIMARY KEY,
    tenant_id    uuid        NOT NULL,
    promotion_id uuid        NOT NULL REFERENCES promotions (id) ON DELETE CASCADE,
    trigger      text        NOT NULL CHECK (trigger IN ('gates', 'hold', 'override', 'approvals')),
    inputs       jsonb       NOT NULL,
    clock        timestamptz NOT NULL,
    record       jsonb       NOT NULL,
    record_json  text        NOT NULL,
    created_at   timestamptz NOT NULL
);

CREATE INDEX decisions_by_promotion ON decisions (tenant_id, promotion_id, created_at, id);

-- Decisions are evidence: once written they never change.
CREATE FUNCTION decisions_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'decision % is immutable', OLD.id USING ERRCODE = 'check_violation';
END;
$$;

CREATE TRIGGER decisions_immutable BEFORE UPDATE ON decisions FOR EACH ROW EXECUTE FUNCTION decisions_immutable();
