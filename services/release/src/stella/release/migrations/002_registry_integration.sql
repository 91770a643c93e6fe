-- A component's registry is read through a `registry` integration of the integration service, named by id
-- (its URL and credential are asked for over NATS; no cross-schema reference). registry_credential_ref stays
-- for installs that still name a host credential; when both are set the integration wins.
ALTER TABLE components ADD COLUMN registry_integration_id uuid;
