-- Who asked for a promotion, by name as well as id: the gateway sends the principal's name and display name
-- with the request; they are kept as they were then (evidence names the requester without asking back).
-- Promotions requested before this migration have neither.
ALTER TABLE promotions
    ADD COLUMN requested_by_name         text CHECK (length(requested_by_name) <= 200),
    ADD COLUMN requested_by_display_name text CHECK (length(requested_by_display_name) <= 200);
