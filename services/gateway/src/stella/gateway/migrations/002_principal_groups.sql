-- Group membership of principals. An environment's approval policy may restrict approvers to named groups;
-- a vote carries the voter's groups to the approval service, which decides eligibility. Group names follow
-- the same pattern as principal names; the API allows at most 50 groups per principal.

CREATE TABLE group_memberships (
    tenant_id     uuid NOT NULL,
    principal_id  uuid NOT NULL,
    group_name    text NOT NULL CHECK (group_name ~ '^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$'),
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, principal_id, group_name),
    FOREIGN KEY (tenant_id, principal_id) REFERENCES principals (tenant_id, id) ON DELETE CASCADE
);

-- Who belongs to a group.
CREATE INDEX group_memberships_group ON group_memberships (tenant_id, group_name);
