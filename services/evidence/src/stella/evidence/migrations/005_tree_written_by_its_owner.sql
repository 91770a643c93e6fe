-- The tree is written by the trigger on packets with its owner's rights, so a service role that may only
-- insert packets cannot write a leaf or a subtree of its own (see privileges.sql): the trigger function runs
-- as its owner, and nobody else may call the function that adds a leaf.
ALTER FUNCTION packets_add_leaf() SECURITY DEFINER;
REVOKE EXECUTE ON FUNCTION merkle_add_leaf(uuid, bigint, text) FROM PUBLIC;
