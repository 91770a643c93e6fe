-- Integration service schema: integrations, the built-in secret store and its per-tenant data keys.

CREATE TABLE integrations (
    id                uuid PRIMARY KEY,
    tenant_id         uuid        NOT NULL,
    type_id           text        NOT NULL,
    name              text        NOT NULL,
    display_name      text        NOT NULL,
    config            jsonb       NOT NULL,
    credential_ref    text,
    health_status     text        NOT NULL DEFAULT 'unknown' CHECK (health_status IN ('unknown', 'healthy', 'unhealthy')),
    health_detail     text        NOT NULL DEFAULT '',
    health_checked_at timestamptz,
    next_check_at     timestamptz NOT NULL,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    CONSTRAINT integrations_name_unique UNIQUE (tenant_id, name)
);

CREATE INDEX integrations_by_name ON integrations (tenant_id, name, id);
CREATE INDEX integrations_due ON integrations (next_check_at);

-- One data key per tenant, stored only wrapped by the master key (which never enters the database);
-- master_key_id says which master key wrapped it, so a rotation knows what to re-wrap.
CREATE TABLE data_keys (
    tenant_id     uuid PRIMARY KEY,
    master_key_id text        NOT NULL,
    wrapped_key   bytea       NOT NULL,
    created_at    timestamptz NOT NULL,
    rewrapped_at  timestamptz
);

-- Secret values, AES-256-GCM under the tenant's data key; never stored or returned in clear.
CREATE TABLE secrets (
    tenant_id   uuid        NOT NULL,
    name        text        NOT NULL,
    description text        NOT NULL,
    nonce       bytea       NOT NULL,
    ciphertext  bytea       NOT NULL,
    created_by  uuid,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, name)
);
