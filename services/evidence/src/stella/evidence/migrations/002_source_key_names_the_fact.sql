-- A packet's source key names the fact the packet records, never the attempt that asked for it, so a retried
-- step or command finds the packet made first: `release_decision:<promotion>:<decision hash>` for a
-- promotion's decision, `<packet type>:<key>` for a packet a command gives a source key, `command:<message id>`
-- otherwise. Packets stored before this rule keep their `step:<run>:<node>:<attempt>` keys (packets never change).
COMMENT ON COLUMN packets.source_key IS
    'The fact the packet records (release_decision:<promotion>:<decision hash>, <packet type>:<key>, '
    'command:<message id>); one packet per tenant and key. Legacy rows: step:<run>:<node>:<attempt>.';
