-- The front of an environment's deployment line: the approved promotion that waits longest (by approval time,
-- then request time and id). Read under the environment's queue lock by every change to the queue, so it must
-- cost the same with one promotion waiting or thousands: this index serves the query's order, and its LIMIT 1
-- reads one entry instead of sorting the whole line.
CREATE INDEX promotions_deploy_line
    ON promotions (tenant_id, target_environment_id, (COALESCE(approved_at, updated_at)), requested_at, id)
    WHERE status = 'approved' AND cleared_at IS NULL AND deploy_step IS NOT NULL;
