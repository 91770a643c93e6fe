-- An idempotency key belongs to the principal that first used it: only that principal's repeats are
-- replayed; another principal presenting the same key is refused (422 VAL_IDEMPOTENCY_KEY_OTHER_PRINCIPAL).
-- Keys stored before this column existed have no owner and are refused to everyone until they expire
-- (at most a day): a replay nobody can be held to is not served.
ALTER TABLE idempotency_keys ADD COLUMN principal_id uuid;
