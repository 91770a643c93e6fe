-- Evidence service schema: the public keys that ever signed evidence, and the append-only packet chain.

-- Signing keys belong to the installation, not to a tenant: one key signs every tenant's packets, and public
-- keys are public. A key is never deleted and never changes; it is only ever retired, so evidence it signed
-- keeps verifying for as long as the evidence is kept.
CREATE TABLE keys (
    key_ref        text PRIMARY KEY CHECK (key_ref ~ '^(ed25519|ecdsa-p256):[0-9a-f]{16}$'),
    algorithm      text        NOT NULL CHECK (algorithm IN ('ed25519', 'ecdsa-p256')),
    public_key_pem text        NOT NULL,
    active         boolean     NOT NULL,
    created_at     timestamptz NOT NULL,
    retired_at     timestamptz,
    CONSTRAINT keys_retired_when_inactive CHECK (active = (retired_at IS NULL)),
    CONSTRAINT keys_algorithm_matches_ref CHECK (starts_with(key_ref, algorithm || ':'))
);

-- At most one key signs new packets at a time.
CREATE UNIQUE INDEX keys_one_active ON keys ((true)) WHERE active;

CREATE FUNCTION keys_retire_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.key_ref = OLD.key_ref AND NEW.algorithm = OLD.algorithm
       AND NEW.public_key_pem = OLD.public_key_pem AND NEW.created_at = OLD.created_at
       AND OLD.active AND NOT NEW.active THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'evidence keys are never deleted or changed, only retired (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER keys_retire_only BEFORE UPDATE OR DELETE ON keys
    FOR EACH ROW EXECUTE FUNCTION keys_retire_only();
CREATE TRIGGER keys_no_truncate BEFORE TRUNCATE ON keys
    FOR EACH STATEMENT EXECUTE FUNCTION keys_retire_only();

-- Packets: the signed evidence of one tenant forms a chain (sequence 1, 2, 3... each linking to the previous
-- packet's content_hash). `content` and `envelope` are json, not jsonb: json keeps the text exactly as
-- written, so a packet read back re-hashes to the same value (jsonb would rewrite numbers such as 1e+21).
CREATE TABLE packets (
    id             uuid PRIMARY KEY,
    tenant_id      uuid        NOT NULL,
    sequence       bigint      NOT NULL CHECK (sequence >= 1),
    packet_type    text        NOT NULL CHECK (packet_type IN ('release_decision', 'deployment', 'rollback', 'drift')),
    promotion_id   uuid,
    previous_hash  text CHECK (previous_hash ~ '^sha256:[0-9a-f]{64}$'),
    content_hash   text        NOT NULL CHECK (content_hash ~ '^sha256:[0-9a-f]{64}$'),
    content        json        NOT NULL,
    envelope       json        NOT NULL,
    signer_key_ref text        NOT NULL REFERENCES keys (key_ref),
    created_at     timestamptz NOT NULL,
    -- What caused the packet (a workflow step attempt, a command): a redelivery finds the packet it made.
    source_key     text        NOT NULL,
    CONSTRAINT packets_sequence_unique UNIQUE (tenant_id, sequence),
    CONSTRAINT packets_source_unique UNIQUE (tenant_id, source_key),
    CONSTRAINT packets_first_has_no_previous CHECK ((sequence = 1) = (previous_hash IS NULL))
);

CREATE INDEX packets_by_promotion ON packets (tenant_id, promotion_id, sequence);
CREATE INDEX packets_by_type ON packets (tenant_id, packet_type, sequence);
CREATE INDEX packets_by_time ON packets (tenant_id, created_at, sequence);

-- Append-only in the database itself, whatever code or role runs against it: every UPDATE, DELETE and
-- TRUNCATE statement on packets fails, even one that matches no row and even for the table's owner.
CREATE FUNCTION packets_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'evidence packets are append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER packets_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON packets
    FOR EACH STATEMENT EXECUTE FUNCTION packets_append_only();

-- Roles other than the owner get no way to change evidence either (a deployment that runs the service under
-- a non-owner role grants it SELECT and INSERT only).
REVOKE UPDATE, DELETE, TRUNCATE ON packets FROM PUBLIC;
REVOKE DELETE, TRUNCATE ON keys FROM PUBLIC;
