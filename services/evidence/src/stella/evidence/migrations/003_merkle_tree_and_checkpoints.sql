-- A Merkle tree (RFC 6962) over each tenant's packets, and the signed checkpoints of its root.
--
-- Leaf i of a tenant's tree is packet sequence i + 1; its data is the packet's signed DSSE payload (the
-- in-toto statement bytes). merkle_nodes holds the hash of every perfect subtree: (level, idx) covers the
-- 2^level leaves from idx * 2^level. A trigger on packets adds the leaf and every subtree it completes in the
-- inserting transaction, so no way of adding a packet can leave it out of the tree.

CREATE TABLE merkle_nodes (
    tenant_id uuid     NOT NULL,
    level     smallint NOT NULL CHECK (level BETWEEN 0 AND 62),
    idx       bigint   NOT NULL CHECK (idx >= 0),
    hash      bytea    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (tenant_id, level, idx)
);

-- The size of each tenant's tree, kept by the same trigger: what the checkpointer compares with the newest
-- checkpoint to know which trees grew. A cache of max(idx) + 1 of the leaves; the leaves are the truth.
CREATE TABLE trees (
    tenant_id uuid   PRIMARY KEY,
    size      bigint NOT NULL CHECK (size >= 1)
);

-- Signed notes (C2SP tlog-checkpoint) of a tenant's tree at a size; kept forever, so an auditor can ask for a
-- consistency proof between any two of them.
CREATE TABLE checkpoints (
    tenant_id  uuid        NOT NULL,
    tree_size  bigint      NOT NULL CHECK (tree_size >= 1),
    root_hash  bytea       NOT NULL CHECK (length(root_hash) = 32),
    note       text        NOT NULL,
    key_ref    text        NOT NULL REFERENCES keys (key_ref),
    created_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, tree_size)
);

CREATE FUNCTION merkle_add_leaf(tenant uuid, seq bigint, payload_b64 text) RETURNS void
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    lvl smallint := 0;
    pos bigint := seq - 1;
    h bytea := sha256('\x00'::bytea || decode(payload_b64, 'base64'));
    sibling bytea;
BEGIN
    INSERT INTO merkle_nodes (tenant_id, level, idx, hash) VALUES (tenant, 0, pos, h);
    WHILE pos % 2 = 1 LOOP
        SELECT hash INTO STRICT sibling FROM merkle_nodes WHERE tenant_id = tenant AND level = lvl AND idx = pos - 1;
        h := sha256('\x01'::bytea || sibling || h);
        lvl := lvl + 1;
        pos := pos / 2;
        INSERT INTO merkle_nodes (tenant_id, level, idx, hash) VALUES (tenant, lvl, pos, h);
    END LOOP;
    INSERT INTO trees (tenant_id, size) VALUES (tenant, seq)
        ON CONFLICT (tenant_id) DO UPDATE SET size = GREATEST(trees.size, EXCLUDED.size);
END;
$$;

CREATE FUNCTION packets_add_leaf() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM merkle_add_leaf(NEW.tenant_id, NEW.sequence, NEW.envelope ->> 'payload');
    RETURN NULL;
END;
$$;

CREATE TRIGGER packets_add_leaf AFTER INSERT ON packets FOR EACH ROW EXECUTE FUNCTION packets_add_leaf();

-- Packets stored before this migration join their tenant's tree in chain order.
DO $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT tenant_id, sequence, envelope ->> 'payload' AS payload FROM packets ORDER BY tenant_id, sequence
    LOOP
        PERFORM merkle_add_leaf(p.tenant_id, p.sequence, p.payload);
    END LOOP;
END;
$$;

-- Nodes and checkpoints are append-only like the packets they commit to.
CREATE TRIGGER merkle_nodes_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON merkle_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION packets_append_only();
CREATE TRIGGER checkpoints_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION packets_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON merkle_nodes, checkpoints FROM PUBLIC;
