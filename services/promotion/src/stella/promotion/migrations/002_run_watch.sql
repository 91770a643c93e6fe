-- The run watch: a promotion waits in pending_gate for its workflow run to bring the gate step. Until it does,
-- run_check_at says when to look again: the run's start is sent again (the run id makes that idempotent) up to
-- a bound, after which the promotion is rejected with PROM_RUN_NOT_STARTED instead of waiting silently.
-- run_checks counts the starts sent again.
ALTER TABLE promotions
    ADD COLUMN run_check_at timestamptz,
    ADD COLUMN run_checks   integer NOT NULL DEFAULT 0 CHECK (run_checks >= 0);

-- Promotions already waiting for a run that never reached them are looked at as soon as the service runs.
UPDATE promotions SET run_check_at = now() WHERE status = 'pending_gate' AND gate_step IS NULL;

CREATE INDEX promotions_run_watch ON promotions (run_check_at) WHERE run_check_at IS NOT NULL;
