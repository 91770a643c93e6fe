-- The kit tests' own table: one row per handled command, so "one effect" can be counted.
CREATE TABLE items (
    id         bigserial PRIMARY KEY,
    tenant_id  uuid NOT NULL,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
