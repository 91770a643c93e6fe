"""The integration types' rules and the secret store's envelope encryption, without I/O."""

from __future__ import annotations

import uuid

import pytest

from stella.contracts.integration import HealthStatus
from stella.integration import domain, keys

INSECURE = ["localhost", "127.0.0.1", "[::1]"]


def test_registry_config_must_match_its_schema() -> None:
    domain.validate_config("registry", {"url": "https://registry.example:5000"}, INSECURE)
    with pytest.raises(domain.InvalidIntegrationConfig) as missing:
        domain.validate_config("registry", {"ca_pem": "x"}, INSECURE)
    assert {tuple(e["loc"]) for e in missing.value.errors} >= {("config",)}
    with pytest.raises(domain.InvalidIntegrationConfig) as extra:
        domain.validate_config("registry", {"url": "https://r.example", "password": "no"}, INSECURE)
    assert "password" in extra.value.errors[0]["msg"]


def test_plain_http_registry_only_for_insecure_hosts() -> None:
    domain.validate_config("registry", {"url": "http://127.0.0.1:5000"}, INSECURE)
    with pytest.raises(domain.InvalidIntegrationConfig):
        domain.validate_config("registry", {"url": "http://registry.example"}, INSECURE)


def test_unknown_type_is_refused_with_its_code() -> None:
    with pytest.raises(domain.UnknownIntegrationType) as exc:
        domain.validate_config("ftp", {}, INSECURE)
    assert (exc.value.code, exc.value.status) == ("INT_UNKNOWN_TYPE", 422)


def test_credential_shape_is_checked_without_showing_it() -> None:
    domain.validate_credential("registry", "alice:s3cret")
    with pytest.raises(domain.CredentialInvalid) as exc:
        domain.validate_credential("registry", "no-colon-here")
    assert "no-colon-here" not in str(exc.value)


def test_every_type_publishes_its_schemas() -> None:
    assert set(domain.TYPES) == {"registry", "notification", "secret-store", "vault"}
    for spec in domain.TYPES.values():
        assert spec.config_schema["type"] == "object"
        assert "type" in spec.secrets_schema


def test_health_change_and_template() -> None:
    assert domain.health_changed(HealthStatus.HEALTHY, HealthStatus.UNHEALTHY)
    assert not domain.health_changed(HealthStatus.HEALTHY, HealthStatus.HEALTHY)
    assert domain.render_template("deploy $app to ${env} $missing", {"app": "api", "env": "prod"}) == (
        "deploy api to prod $missing"
    )


def test_values_decrypt_only_for_their_tenant_and_name() -> None:
    tenant, other = uuid.uuid4(), uuid.uuid4()
    data_key = keys.new_data_key()
    nonce, ciphertext = keys.encrypt_value(data_key, tenant, "db", "hunter2")
    assert b"hunter2" not in ciphertext
    assert keys.decrypt_value(data_key, tenant, "db", nonce, ciphertext) == "hunter2"
    with pytest.raises(keys.KeyUnavailable):
        keys.decrypt_value(data_key, other, "db", nonce, ciphertext)
    with pytest.raises(keys.KeyUnavailable):
        keys.decrypt_value(data_key, tenant, "other-name", nonce, ciphertext)


def test_rotation_keeps_data_keys_readable_through_the_keyring() -> None:
    tenant = uuid.uuid4()
    old, new = keys.MasterKey.parse(keys.new_master_key()), keys.MasterKey.parse(keys.new_master_key())
    data_key = keys.new_data_key()
    wrapped = old.wrap(tenant, data_key)
    ring = keys.Keyring(new, (old,))
    assert ring.get(old.key_id).unwrap(tenant, wrapped) == data_key
    rewrapped = ring.current.wrap(tenant, data_key)
    assert new.unwrap(tenant, rewrapped) == data_key
    with pytest.raises(keys.KeyUnavailable):
        new.unwrap(tenant, wrapped)
    with pytest.raises(keys.KeyUnavailable):
        keys.Keyring(new).get(old.key_id)
    assert "key=" not in repr(old)


def test_master_key_must_be_32_bytes_of_base64() -> None:
    with pytest.raises(keys.MasterKeyError):
        keys.MasterKey.parse("not base64!")
    with pytest.raises(keys.MasterKeyError):
        keys.MasterKey.parse("c2hvcnQ=")


def test_a_notification_body_fills_the_template_and_keeps_the_slack_format_bare() -> None:
    config = {"url": "https://hooks.example/x", "template": "[$env] $message ($integration)"}
    assert domain.notification_body(config, "chat", "notification", "up", {"env": "prod"}) == {
        "text": "[prod] up (chat)",
        "event": "notification",
        "integration": "chat",
        "fields": {"env": "prod"},
    }
    slack = {**config, "format": "slack"}
    assert domain.notification_body(slack, "chat", "notification", "up", {"env": "prod"}) == {
        "text": "[prod] up (chat)"
    }
    # A field cannot replace the message or the integration's name.
    assert domain.notification_body(slack, "chat", "e", "up", {"message": "x", "integration": "y", "env": "d"}) == {
        "text": "[d] up (chat)"
    }


def test_vault_references_and_config() -> None:
    ref = domain.CredentialRef.parse("vault:ci/registry#login")
    assert (ref.scheme, ref.target, ref.key, ref.operator_only) == ("vault", "ci/registry", "login", False)
    domain.validate_config("vault", {"address": "https://vault.example:8200", "mount": "kv", "namespace": "a/b"}, [])
    for config in ({"address": "http://vault.example"}, {"address": "https://v.example", "mount": "../sys"}):
        with pytest.raises(domain.InvalidIntegrationConfig):
            domain.validate_config("vault", config, ["127.0.0.1"])
    domain.validate_config("vault", {"address": "http://127.0.0.1:8200"}, ["127.0.0.1"])
