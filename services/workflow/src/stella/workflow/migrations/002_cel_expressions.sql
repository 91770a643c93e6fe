-- Conditions and outputs are CEL from this version on. The built-in standard-promotion template version 1
-- spelled one output in the former language ("... and ..."); it is rewritten in place with the same
-- meaning ("... && ..."), so runs pinned to version 1 keep working. Tenant templates stay as they were
-- saved: an expression that is not valid CEL fails its step (or, for an output, its run) when it is
-- reached, which is fail closed, until the tenant saves a new version in CEL.
ALTER TABLE templates DISABLE TRIGGER templates_immutable;

UPDATE templates
   SET definition = jsonb_set(
           definition,
           '{outputs,approved}',
           to_jsonb('steps.gates.status == "succeeded" && steps.approval.status != "failed"'::text)
       )
 WHERE tenant_id IS NULL
   AND name = 'standard-promotion'
   AND version = 1
   AND definition #>> '{outputs,approved}' = 'steps.gates.status == "succeeded" and steps.approval.status != "failed"';

ALTER TABLE templates ENABLE TRIGGER templates_immutable;
