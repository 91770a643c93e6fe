-- Public events as published (the exact CloudEvent JSON), the tenants' webhooks, and their deliveries.
-- Every table carries tenant_id and every query filters on it; foreign keys include the tenant, so a
-- delivery can never point at another tenant's webhook or event.

CREATE TABLE public_events (
    seq         bigserial PRIMARY KEY,
    -- The CloudEvent's id: one row per public event however often its internal event is delivered.
    id          uuid        NOT NULL UNIQUE,
    tenant_id   uuid        NOT NULL,
    type        text        NOT NULL,
    -- <context> of org.stellaops.<context>.<event>, for org.stellaops.<context>.* filters.
    context     text        NOT NULL,
    time        timestamptz NOT NULL,
    -- Resources the event concerns, as <kind>/<id> (promotions/..., releases/...): a timeline's filter.
    related     text[]      NOT NULL,
    -- The CloudEvent exactly as published on NATS, sent to webhooks and listed.
    payload     text        NOT NULL,
    recorded_at timestamptz NOT NULL,
    UNIQUE (tenant_id, seq)
);

CREATE INDEX public_events_by_tenant ON public_events (tenant_id, seq);
CREATE INDEX public_events_related ON public_events USING gin (related);
CREATE INDEX public_events_recorded_at ON public_events (recorded_at);

CREATE TABLE webhooks (
    id                   uuid PRIMARY KEY,
    tenant_id            uuid        NOT NULL,
    url                  text        NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    description          text        NOT NULL DEFAULT '',
    -- Exact types or org.stellaops.<context>.*; empty: every type.
    event_types          text[]      NOT NULL,
    -- The signing secret sealed with the service's key (AES-256-GCM, bound to tenant and webhook id).
    secret_sealed        bytea       NOT NULL,
    enabled              boolean     NOT NULL,
    disabled_reason      text,
    disabled_at          timestamptz,
    -- The run of failed attempts since the last success: when it started and how long it is.
    failing_since        timestamptz,
    consecutive_failures integer     NOT NULL DEFAULT 0,
    last_error           text,
    created_by           uuid,
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL,
    UNIQUE (tenant_id, id)
);

CREATE INDEX webhooks_by_tenant ON webhooks (tenant_id, created_at, id);

CREATE TABLE deliveries (
    id              uuid PRIMARY KEY,
    tenant_id       uuid        NOT NULL,
    webhook_id      uuid        NOT NULL,
    event_seq       bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    -- Attempts started (an attempt is counted when it is claimed, so a crash mid-send still counts).
    attempts        integer     NOT NULL DEFAULT 0,
    -- When the next attempt is due; while an attempt runs, when its lease ends.
    next_attempt_at timestamptz,
    -- Retries stop after this (created_at + the retry window).
    deadline        timestamptz NOT NULL,
    created_at      timestamptz NOT NULL,
    completed_at    timestamptz,
    last_status_code integer,
    last_error      text,
    redelivery_of   uuid,
    FOREIGN KEY (tenant_id, webhook_id) REFERENCES webhooks (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, event_seq) REFERENCES public_events (tenant_id, seq) ON DELETE CASCADE
);

CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_by_webhook ON deliveries (tenant_id, webhook_id, created_at DESC, id DESC);
CREATE INDEX deliveries_by_event ON deliveries (tenant_id, event_seq);

CREATE TABLE delivery_attempts (
    delivery_id      uuid        NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt          integer     NOT NULL,
    tenant_id        uuid        NOT NULL,
    started_at       timestamptz NOT NULL,
    duration_ms      double precision NOT NULL,
    status_code      integer,
    error            text,
    response_excerpt text,
    PRIMARY KEY (delivery_id, attempt)
);

-- Wake the delivery loops of every replica when deliveries are added or become due again (on commit).
CREATE FUNCTION deliveries_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('stella_deliveries_' || TG_TABLE_SCHEMA, '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER deliveries_notify AFTER INSERT ON deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION deliveries_notify();
