-- Plugins installed on the server (one row per plugin id, every tenant sees them) and each tenant's
-- instances of them: a plugin is usable by a tenant only through an enabled instance, whose config it receives.

CREATE TABLE plugins (
    plugin_id    text PRIMARY KEY,
    version      text        NOT NULL,
    vendor       text        NOT NULL,
    manifest     jsonb       NOT NULL,
    status       text        NOT NULL DEFAULT 'installed' CHECK (status IN ('installed')),
    entrypoint   text        NOT NULL,
    source       text        NOT NULL,
    directory    text        NOT NULL,
    installed_by uuid,
    installed_at timestamptz NOT NULL
);

CREATE TABLE plugin_instances (
    id         uuid PRIMARY KEY,
    tenant_id  uuid        NOT NULL,
    plugin_id  text        NOT NULL REFERENCES plugins (plugin_id),
    config     jsonb       NOT NULL,
    enabled    boolean     NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    CONSTRAINT plugin_instances_one_per_tenant UNIQUE (tenant_id, plugin_id)
);
