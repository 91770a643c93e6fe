-- Dashboard sessions: the cookie holds a random session secret (only its SHA-256 is kept here), bound to
-- the API token it was signed in with. Signing out ends the session on the server, so a copied cookie
-- stops working at once; revoking or expiring the token ends its sessions too (the lookup joins it).
CREATE TABLE ui_sessions (
    session_hash  bytea PRIMARY KEY CHECK (octet_length(session_hash) = 32),
    tenant_id     uuid NOT NULL,
    token_id      uuid NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    ended_at      timestamptz
);
CREATE INDEX ui_sessions_by_expiry ON ui_sessions (expires_at);
