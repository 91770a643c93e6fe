-- Approval service schema: one approval request per promotion, the votes on it, and cancellations that
-- arrived before their request.

CREATE TABLE approval_requests (
    tenant_id       uuid        NOT NULL,
    promotion_id    uuid        NOT NULL,
    environment_id  uuid        NOT NULL,
    requester_id    uuid        NOT NULL,
    required        integer     NOT NULL CHECK (required BETWEEN 0 AND 100),
    require_sod     boolean     NOT NULL,
    approver_groups text[]      NOT NULL DEFAULT '{}',
    status          text        NOT NULL CHECK (status IN ('pending', 'granted', 'denied', 'expired', 'cancelled')),
    requested_at    timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL CHECK (expires_at > requested_at),
    decided_at      timestamptz,
    -- The workflow step attempt waiting on this request (whoever acts on the decision completes it).
    step_run_id     uuid,
    step_node_id    text,
    step_attempt    integer CHECK (step_attempt >= 1),
    -- The correlation of the message that opened the request, carried by the events the timer emits.
    correlation_id  uuid        NOT NULL,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, promotion_id),
    CONSTRAINT approval_requests_decided CHECK ((status = 'pending') = (decided_at IS NULL)),
    CONSTRAINT approval_requests_step CHECK (
        (step_run_id IS NULL AND step_node_id IS NULL AND step_attempt IS NULL)
        OR (step_run_id IS NOT NULL AND step_node_id IS NOT NULL AND step_attempt IS NOT NULL)
    )
);

-- The expiry timer reads min(expires_at) of pending requests and the due ones in expiry order: only
-- pending rows are indexed, so decided history never slows it down.
CREATE INDEX approval_requests_pending_expiry ON approval_requests (expires_at) WHERE status = 'pending';

CREATE TABLE approval_votes (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     uuid        NOT NULL,
    promotion_id  uuid        NOT NULL,
    approver_id   uuid        NOT NULL,
    action        text        NOT NULL CHECK (action IN ('approved', 'rejected')),
    comment       text        NOT NULL DEFAULT '' CHECK (length(comment) <= 4000),
    cast_at       timestamptz NOT NULL,
    FOREIGN KEY (tenant_id, promotion_id) REFERENCES approval_requests (tenant_id, promotion_id) ON DELETE CASCADE,
    -- One vote per principal per promotion, whatever code runs against this table.
    CONSTRAINT approval_votes_one_per_approver UNIQUE (tenant_id, promotion_id, approver_id)
);

-- A promotion cancelled before its approval step started: the request opened later starts cancelled, so
-- a cancellation that overtakes the step still closes it.
CREATE TABLE approval_cancellations (
    tenant_id    uuid        NOT NULL,
    promotion_id uuid        NOT NULL,
    reason       text        NOT NULL,
    cancelled_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, promotion_id)
);
