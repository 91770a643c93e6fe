-- Who voted, by name as well as id: the gateway sends the principal's name and display name with the vote,
-- and they are kept as they were when the vote was cast (evidence names approvers without asking back).
-- Votes recorded before this migration have neither.
ALTER TABLE approval_votes
    ADD COLUMN approver_name         text CHECK (length(approver_name) <= 200),
    ADD COLUMN approver_display_name text CHECK (length(approver_display_name) <= 200);
