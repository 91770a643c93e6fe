-- Deployments: one promotion per environment deploys at a time; the others queue in 'approved'.
-- cleared_at: when an approved promotion took its environment's deployment slot (its deploy step was let go).
-- deploy_step: the completion of the step before the deploy step, held while the promotion is queued
--              ({run_id, node_id, attempt, outputs}); it is sent when the promotion reaches the head of the queue.
ALTER TABLE promotions
    ADD COLUMN cleared_at  timestamptz,
    ADD COLUMN deploy_step jsonb;

-- The slot, enforced by the database too: at most one promotion per environment deploying or cleared to deploy.
CREATE UNIQUE INDEX promotions_one_deploy_slot
    ON promotions (tenant_id, target_environment_id)
    WHERE status = 'deploying' OR (status = 'approved' AND cleared_at IS NOT NULL);

-- The queue of an environment: its approved and deploying promotions.
CREATE INDEX promotions_deploy_queue
    ON promotions (tenant_id, target_environment_id, approved_at)
    WHERE status IN ('approved', 'deploying');
