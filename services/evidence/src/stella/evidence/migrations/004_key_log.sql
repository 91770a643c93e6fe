-- The signed key log (see stella.evidence.keylog): one DSSE-signed entry per key, in the order the keys became
-- active, each naming the hash of the entry before it. A key is valid from its entry's valid_from until the
-- next entry's. Entries for keys that predate the log are written at the next start, signed by the active key.
CREATE TABLE key_log (
    idx        bigint      PRIMARY KEY CHECK (idx >= 0),
    key_ref    text        NOT NULL UNIQUE REFERENCES keys (key_ref),
    envelope   json        NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE TRIGGER key_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON key_log
    FOR EACH STATEMENT EXECUTE FUNCTION packets_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON key_log FROM PUBLIC;
