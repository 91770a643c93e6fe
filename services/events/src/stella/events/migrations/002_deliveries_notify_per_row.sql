-- Wake the delivery loops only when a statement queued deliveries. The statement-level trigger fired for
-- every projected event, also when no webhook took it (INSERT ... SELECT of no rows), and each wake costs
-- every replica a read of the next due time. A row-level trigger fires per queued row; notifications of one
-- transaction on one channel with one payload are delivered once, on commit.
DROP TRIGGER deliveries_notify ON deliveries;
CREATE TRIGGER deliveries_notify AFTER INSERT ON deliveries
    FOR EACH ROW EXECUTE FUNCTION deliveries_notify();
