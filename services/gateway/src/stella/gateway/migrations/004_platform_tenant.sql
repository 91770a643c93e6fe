-- The platform (operator) tenant: its principals bound to platform-admin manage tenants through
-- /api/v1/tenants. There is at most one; ordinary tenants can never hold the platform-admin role.
ALTER TABLE tenants ADD COLUMN is_platform boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX tenants_one_platform ON tenants (is_platform) WHERE is_platform;

ALTER TABLE role_bindings DROP CONSTRAINT role_bindings_role_check;
ALTER TABLE role_bindings ADD CONSTRAINT role_bindings_role_check
    CHECK (role IN ('viewer', 'developer', 'approver', 'operator', 'tenant-admin', 'platform-admin'));
