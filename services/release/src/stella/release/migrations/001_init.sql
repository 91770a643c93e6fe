-- Release service schema: components, their version map, and releases (bundles of digests).

CREATE TABLE components (
    id                      uuid PRIMARY KEY,
    tenant_id               uuid        NOT NULL,
    name                    text        NOT NULL,
    display_name            text        NOT NULL,
    image_repository        text        NOT NULL,
    versioning_strategy     jsonb       NOT NULL,
    default_channel         text        NOT NULL,
    registry_credential_ref text,
    created_at              timestamptz NOT NULL,
    updated_at              timestamptz NOT NULL,
    CONSTRAINT components_name_unique UNIQUE (tenant_id, name)
);

CREATE TABLE versions (
    id           uuid PRIMARY KEY,
    tenant_id    uuid        NOT NULL,
    component_id uuid        NOT NULL REFERENCES components (id) ON DELETE CASCADE,
    tag          text        NOT NULL,
    digest       text        NOT NULL CHECK (digest ~ '^sha256:[0-9a-f]{64}$'),
    semver       text,
    channel      text        NOT NULL,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    CONSTRAINT versions_tag_unique UNIQUE (component_id, tag)
);

CREATE INDEX versions_by_recency ON versions (tenant_id, component_id, updated_at DESC, id DESC);

CREATE TABLE releases (
    id                 uuid PRIMARY KEY,
    tenant_id          uuid        NOT NULL,
    name               text        NOT NULL,
    display_name       text        NOT NULL,
    status             text        NOT NULL CHECK (status IN ('draft', 'ready', 'deployed', 'deprecated')),
    components         jsonb       NOT NULL,
    source_ref         jsonb       NOT NULL,
    created_by         uuid,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    ready_at           timestamptz,
    deprecated_at      timestamptz,
    deprecation_reason text,
    CONSTRAINT releases_name_unique UNIQUE (tenant_id, name)
);

CREATE INDEX releases_by_recency ON releases (tenant_id, created_at DESC, id DESC);
CREATE INDEX releases_by_status ON releases (tenant_id, status, created_at DESC, id DESC);

-- Which components a release uses: answers "is this component in use" and "releases of a component"
-- with an index instead of scanning JSON.
CREATE TABLE release_components (
    release_id   uuid NOT NULL REFERENCES releases (id) ON DELETE CASCADE,
    component_id uuid NOT NULL REFERENCES components (id),
    tenant_id    uuid NOT NULL,
    PRIMARY KEY (release_id, component_id)
);

CREATE INDEX release_components_by_component ON release_components (tenant_id, component_id);

-- Digest-first, in the database too: once a release leaves draft its name and images never change,
-- whatever code runs against this table.
CREATE FUNCTION releases_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'draft' AND (NEW.components IS DISTINCT FROM OLD.components
                                  OR NEW.name IS DISTINCT FROM OLD.name
                                  OR NEW.tenant_id IS DISTINCT FROM OLD.tenant_id) THEN
        RAISE EXCEPTION 'release % is % and immutable', OLD.id, OLD.status USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER releases_frozen BEFORE UPDATE ON releases FOR EACH ROW EXECUTE FUNCTION releases_frozen();
