"""The rules of webhooks without I/O: which URLs and addresses, when to retry, when to disable."""

from __future__ import annotations

import ipaddress
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook

from stella.events.delivery import signed_headers
from stella.events.domain import (
    AddressPolicy,
    DisablePolicy,
    Health,
    InvalidWebhookUrl,
    RetryPolicy,
    UnknownEventType,
    WebhookUrlForbidden,
    WebhookUrlNotHttps,
    WebhookUrlUnresolvable,
    check_addresses,
    check_event_types,
    parse_webhook_url,
    public_event_id,
)
from stella.events.sealing import Sealer, SealingError, load_or_create_key, new_secret

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
STRICT = AddressPolicy()


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.1",
        "::1",
        "169.254.169.254",  # cloud metadata
        "fe80::1",
        "10.0.0.5",
        "172.16.3.4",
        "192.168.1.1",
        "100.64.0.1",  # shared address space (carrier NAT)
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "fc00::1",
        "::ffff:127.0.0.1",  # IPv4 written as IPv6
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "198.18.0.1",  # benchmarking range
        "240.0.0.1",  # reserved
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not STRICT.allows(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert STRICT.allows(ipaddress.ip_address(address))


def test_the_allow_list_lets_named_networks_through_and_nothing_else() -> None:
    policy = AddressPolicy(allowed_networks=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.20.0.0/16")))
    assert policy.allows(ipaddress.ip_address("127.0.0.1"))
    assert policy.allows(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert policy.allows(ipaddress.ip_address("10.20.1.2"))
    assert not policy.allows(ipaddress.ip_address("10.21.0.1"))
    assert not policy.allows(ipaddress.ip_address("169.254.169.254"))
    assert not policy.allows(ipaddress.ip_address("::1"))


@pytest.mark.parametrize("url", ["https://169.254.169.254/latest/meta-data/", "http://169.254.169.254/"])
def test_metadata_address_url_is_refused_without_resolving(url: str) -> None:
    with pytest.raises(WebhookUrlForbidden) as caught:
        parse_webhook_url(url, STRICT)
    assert caught.value.status == 422
    assert caught.value.code == "VAL_WEBHOOK_URL_FORBIDDEN"


def test_plain_http_is_refused_when_https_is_required() -> None:
    with pytest.raises(WebhookUrlNotHttps) as caught:
        parse_webhook_url("http://hooks.example.com/stella", STRICT)
    assert caught.value.status == 422
    target = parse_webhook_url("http://hooks.example.com:8081/x", AddressPolicy(require_https=False))
    assert (target.scheme, target.host, target.port, target.needs_resolution) == (
        "http",
        "hooks.example.com",
        8081,
        True,
    )


def test_https_url_parts() -> None:
    target = parse_webhook_url("https://Hooks.Example.com./in?x=1", STRICT)
    assert (target.host, target.port) == ("hooks.example.com", 443)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "https:///nohost",
        "example.com/path",
        "https://exa mple.com/",
        "https://example.com/\x00",
        "https://example.com:99999/",
        "https://[::1/",
        "https://example.com/" + "a" * 2100,
    ],
)
def test_malformed_urls_are_400(url: str) -> None:
    with pytest.raises(InvalidWebhookUrl) as caught:
        parse_webhook_url(url, STRICT)
    assert caught.value.status == 400


def test_resolved_addresses_must_all_be_allowed() -> None:
    target = parse_webhook_url("https://rebind.example/", STRICT)
    check_addresses(target, [ipaddress.ip_address("93.184.216.34")], STRICT)
    with pytest.raises(WebhookUrlForbidden):
        check_addresses(target, [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.0.0.1")], STRICT)
    with pytest.raises(WebhookUrlUnresolvable):
        check_addresses(target, [], STRICT)


def test_event_type_filters() -> None:
    assert check_event_types(
        ["org.stellaops.promotion.approved", "org.stellaops.release.*", "org.stellaops.release.*"]
    ) == [
        "org.stellaops.promotion.approved",
        "org.stellaops.release.*",
    ]
    for bad in ("org.stellaops.promotion.exploded", "org.stellaops.nothing.*", "promotion.approved", "*", ""):
        with pytest.raises(UnknownEventType) as caught:
            check_event_types([bad])
        assert caught.value.code == "VAL_UNKNOWN_EVENT_TYPE"


def test_retries_back_off_exponentially_with_jitter_and_stop_at_the_deadline() -> None:
    policy = RetryPolicy(base=timedelta(seconds=5), max_interval=timedelta(hours=1), window=timedelta(hours=24))
    assert policy.delay(1, 1.0) == timedelta(seconds=5)
    assert policy.delay(1, 0.0) == timedelta(seconds=2.5)
    assert policy.delay(2, 1.0) == timedelta(seconds=10)
    assert policy.delay(4, 1.0) == timedelta(seconds=40)
    assert policy.delay(30, 1.0) == timedelta(hours=1)
    assert policy.delay(10_000, 0.5) == timedelta(minutes=45)
    deadline = T0 + timedelta(hours=24)
    assert policy.next_attempt(1, deadline, T0, 1.0) == T0 + timedelta(seconds=5)
    # The back-off would pass the deadline: the last attempt is made at the deadline.
    assert policy.next_attempt(20, deadline, deadline - timedelta(minutes=1), 1.0) == deadline
    assert policy.next_attempt(21, deadline, deadline, 1.0) is None
    # Over the whole window, the schedule keeps trying (not a handful of fast retries).
    now, attempts = T0, 1
    while (nxt := policy.next_attempt(attempts, deadline, now, 0.5)) is not None:
        now, attempts = nxt, attempts + 1
    assert now == deadline
    assert 25 <= attempts <= 50


def test_a_webhook_is_disabled_after_failing_long_enough_and_often_enough() -> None:
    policy = DisablePolicy(after=timedelta(hours=24), after_failures=10)
    health = Health()
    for i in range(9):
        health = health.failed(T0 + timedelta(hours=3 * i))
    assert health.failing_since == T0
    assert not policy.should_disable(health, T0 + timedelta(hours=25))  # 9 failures
    health = health.failed(T0 + timedelta(hours=20))
    assert not policy.should_disable(health, T0 + timedelta(hours=20))  # not 24 h yet
    assert policy.should_disable(health, T0 + timedelta(hours=24))
    assert "10 delivery attempts" in policy.reason(health)
    assert Health.succeeded() == Health()


def test_public_event_ids_are_stable_per_internal_event() -> None:
    internal = uuid.uuid4()
    assert public_event_id(internal) == public_event_id(internal)
    assert public_event_id(internal) != public_event_id(uuid.uuid4())


def test_sealed_secrets_open_only_for_their_webhook(tmp_path) -> None:
    key_file = tmp_path / "keys" / "webhook.key"
    key = load_or_create_key(key_file)
    assert load_or_create_key(key_file) == key  # kept, never overwritten
    assert key_file.stat().st_mode & 0o777 == 0o600
    sealer = Sealer(key)
    tenant, webhook = uuid.uuid4(), uuid.uuid4()
    secret = new_secret()
    assert secret.startswith("whsec_")
    sealed = sealer.seal(secret, tenant, webhook)
    assert secret.encode() not in sealed
    assert sealer.open(sealed, tenant, webhook) == secret
    with pytest.raises(SealingError):
        sealer.open(sealed, tenant, uuid.uuid4())  # copied onto another webhook
    with pytest.raises(SealingError):
        Sealer(bytes(32)).open(sealed, tenant, webhook)  # another key


def test_deliveries_are_signed_per_standard_webhooks() -> None:
    secret = new_secret()
    payload = '{"specversion":"1.0","id":"e1"}'
    now = datetime.now(UTC)
    headers = signed_headers(secret, "e1", payload, now)
    assert headers["webhook-id"] == "e1"
    assert headers["Content-Type"] == "application/cloudevents+json"
    assert Webhook(secret).verify(payload, headers) == {"specversion": "1.0", "id": "e1"}
    with pytest.raises(Exception, match="signature"):
        Webhook(new_secret()).verify(payload, headers)
