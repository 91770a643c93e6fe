-- Headers published with an outbox row: the trace context of the transaction that wrote it (so a trace
-- continues through the relay), and headers of its own (a public event's Content-Type), as a JSON object.
-- Text rather than jsonb: it is only ever read back whole, by connections with or without JSON codecs.
ALTER TABLE outbox ADD COLUMN headers text;
