-- registry_credential_ref is deprecated: a component's registry credential is named through a `registry`
-- integration (registry_integration_id), whose secret lives encrypted in the integration service's store or in a
-- vault. The references cannot be moved here automatically: the integrations, the secret store and the operator's
-- allow-list of host references belong to the integration service, which this schema never touches. So:
--   * a reference on a component that already names an integration was never read (the integration wins): it is
--     dropped now;
--   * the other references stay and are still read, only as a fallback, and only while the operator's allow-list
--     (STELLA_RELEASE_CREDENTIAL_REFS) still lists them; the service refuses new ones and logs at start how many
--     components still rely on one. Naming an integration on such a component removes its reference.
--   * from now on a component has one or the other, never both.
-- A later migration drops the column once no component has a reference (docs/operations.md, "Registry
-- credentials").
UPDATE components SET registry_credential_ref = NULL WHERE registry_integration_id IS NOT NULL;
ALTER TABLE components ADD CONSTRAINT components_one_registry_credential
    CHECK (registry_credential_ref IS NULL OR registry_integration_id IS NULL);
COMMENT ON COLUMN components.registry_credential_ref IS
    'Deprecated: read only as a fallback for components created before registry integrations; see registry_integration_id.';
