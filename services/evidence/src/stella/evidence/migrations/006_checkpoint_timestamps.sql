-- RFC 3161 timestamps of checkpoints, from the time-stamping authority in STELLA_EVIDENCE_TSA_URL when one is
-- configured: the DER TimeStampToken over the checkpoint's signed note. Kept apart from the checkpoint, so a
-- TSA that does not answer never holds a checkpoint back (the next export asks again). Append-only.
CREATE TABLE checkpoint_timestamps (
    tenant_id  uuid        NOT NULL,
    tree_size  bigint      NOT NULL,
    token      bytea       NOT NULL CHECK (length(token) BETWEEN 1 AND 65536),
    tsa_url    text        NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, tree_size),
    FOREIGN KEY (tenant_id, tree_size) REFERENCES checkpoints (tenant_id, tree_size)
);
CREATE TRIGGER checkpoint_timestamps_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON checkpoint_timestamps
    FOR EACH STATEMENT EXECUTE FUNCTION packets_append_only();
