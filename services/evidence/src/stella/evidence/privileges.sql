-- What the evidence service's login role may do (see stella.kit.roles). Evidence is append-only for it:
-- INSERT and SELECT on everything that records evidence, never UPDATE, DELETE or TRUNCATE, and as it owns
-- nothing it cannot disable a trigger or alter a table either.

-- The kit's tables: the relay marks and purges published events; the inbox is purged too.
GRANT SELECT, INSERT, UPDATE, DELETE ON {schema}.outbox, {schema}.inbox TO {role};
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role};
GRANT SELECT ON {schema}.schema_migrations, {schema}.kit_migrations TO {role};

-- Evidence: packets and the key log are only ever appended to; a key is only ever retired (a trigger
-- refuses any other change, and UPDATE is granted on the two columns a retirement sets).
GRANT SELECT, INSERT ON {schema}.packets, {schema}.checkpoints, {schema}.key_log, {schema}.keys TO {role};
GRANT SELECT, INSERT ON {schema}.checkpoint_timestamps TO {role};
GRANT UPDATE (active, retired_at) ON {schema}.keys TO {role};

-- The Merkle tree is written by the trigger on packets (a SECURITY DEFINER function), never by the role.
GRANT SELECT ON {schema}.merkle_nodes, {schema}.trees TO {role};
