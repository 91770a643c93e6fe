-- The gateway's own data: tenants, principals and their role bindings, API tokens, idempotency keys.
-- Every table but tenants carries tenant_id and every query filters on it; foreign keys include the
-- tenant so a row can never point at another tenant's row.

CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$'),
    created_at  timestamptz NOT NULL
);

CREATE TABLE principals (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    name          text NOT NULL CHECK (name ~ '^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$'),
    kind          text NOT NULL CHECK (kind IN ('user', 'service')),
    display_name  text,
    created_at    timestamptz NOT NULL,
    created_by    uuid,
    -- Principals are retired, not erased: their ids stay meaningful in audit records.
    deleted_at    timestamptz,
    UNIQUE (tenant_id, id)
);

-- A name is unique among the live principals of a tenant; a deleted principal's name can be reused.
CREATE UNIQUE INDEX principals_live_name ON principals (tenant_id, name) WHERE deleted_at IS NULL;

CREATE TABLE role_bindings (
    tenant_id     uuid NOT NULL,
    principal_id  uuid NOT NULL,
    role          text NOT NULL CHECK (role IN ('viewer', 'developer', 'approver', 'operator', 'tenant-admin')),
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, principal_id, role),
    FOREIGN KEY (tenant_id, principal_id) REFERENCES principals (tenant_id, id) ON DELETE CASCADE
);

CREATE INDEX role_bindings_role ON role_bindings (tenant_id, role);

CREATE TABLE tokens (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL,
    principal_id  uuid NOT NULL,
    name          text NOT NULL DEFAULT '',
    -- SHA-256 of the token; the token itself is shown once and never stored.
    token_hash    bytea NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    -- The first characters of the token, so a person can tell their tokens apart.
    prefix        text NOT NULL,
    created_at    timestamptz NOT NULL,
    created_by    uuid,
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz,
    FOREIGN KEY (tenant_id, principal_id) REFERENCES principals (tenant_id, id)
);

CREATE INDEX tokens_by_tenant ON tokens (tenant_id, created_at, id);
CREATE INDEX tokens_by_principal ON tokens (tenant_id, principal_id);

CREATE TABLE idempotency_keys (
    tenant_id         uuid NOT NULL REFERENCES tenants (id),
    method            text NOT NULL,
    path              text NOT NULL,
    key               text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    -- SHA-256 of the canonical request body: the same key with another body is refused.
    request_hash      bytea NOT NULL,
    -- message_id of the command the request sends, the same for every retry of the key.
    message_id        uuid NOT NULL UNIQUE,
    -- in_flight: a request holds the key; done: the response is stored and replayed;
    -- retryable: no final answer yet (a 5xx, e.g. a command still queued), the next retry runs again.
    state             text NOT NULL CHECK (state IN ('in_flight', 'done', 'retryable')),
    response_status   integer,
    response_headers  jsonb,
    response_body     bytea,
    -- A service's reply that arrived after the request had already answered 503 SYS_PENDING.
    late_reply        jsonb,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    expires_at        timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, method, path, key)
);

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
