-- Transactional outbox: events written in the same transaction as the state change that caused them,
-- published by the relay in id order with Nats-Msg-Id = message_id.
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    message_id   uuid        NOT NULL UNIQUE,
    tenant_id    uuid        NOT NULL,
    subject      text        NOT NULL,
    payload      text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);

CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Wake the relay as soon as a transaction that wrote events commits (NOTIFY is delivered on commit).
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('stella_outbox_' || TG_TABLE_SCHEMA, '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Inbox: one row per (consumer, message) handled, written in the handler's transaction, so a message
-- delivered twice has one effect. `reply` keeps a command's answer so a repeated command answers the same.
CREATE TABLE inbox (
    consumer     text        NOT NULL,
    message_id   uuid        NOT NULL,
    handled_at   timestamptz NOT NULL DEFAULT now(),
    reply        jsonb,
    PRIMARY KEY (consumer, message_id)
);

CREATE INDEX inbox_handled_at ON inbox (handled_at);
