"""Token format, header parsing, the lookup cache and batched last-use writes."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stella.gateway.auth import TOKEN_PREFIX, Authenticator, hash_token, new_token
from stella.gateway.problems import ProblemError
from stella.gateway.store import TokenAuth

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class RecordingStore:
    """Stands in for the database: holds tokens by hash and counts lookups."""

    def __init__(self) -> None:
        self.tokens: dict[bytes, TokenAuth] = {}
        self.lookups = 0
        self.touched: list[list[tuple[uuid.UUID, uuid.UUID, datetime]]] = []
        self.fail_touch = False

    def add(self, secret: str, **changes: Any) -> TokenAuth:
        fields: dict[str, Any] = {
            "token_id": uuid.uuid4(),
            "tenant_id": uuid.uuid4(),
            "principal_id": uuid.uuid4(),
            "principal_name": "alice",
            "principal_kind": "user",
            "roles": ("developer",),
            "groups": (),
            "expires_at": None,
            "revoked_at": None,
            "principal_deleted_at": None,
        }
        fields.update(changes)
        record = TokenAuth(**fields)
        self.tokens[hash_token(secret)] = record
        return record

    async def find_token(self, token_hash: bytes) -> TokenAuth | None:
        self.lookups += 1
        return self.tokens.get(token_hash)

    async def touch_tokens(self, uses: list[tuple[uuid.UUID, uuid.UUID, datetime]]) -> None:
        if self.fail_touch:
            raise ConnectionError("database away")
        self.touched.append(list(uses))


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def _authenticator(store: RecordingStore, clock: Clock, ttl_s: float = 60.0, max_entries: int = 100) -> Authenticator:
    return Authenticator(store, clock, ttl_s=ttl_s, max_entries=max_entries)  # type: ignore[arg-type]


async def _code(authenticator: Authenticator, header: str | None) -> str:
    with pytest.raises(ProblemError) as caught:
        await authenticator.authenticate(header)
    assert caught.value.status == 401
    assert caught.value.headers["WWW-Authenticate"].startswith("Bearer")
    return caught.value.code


def test_tokens_are_random_prefixed_and_stored_only_as_sha256() -> None:
    first, second = new_token(), new_token()
    assert first.secret.startswith(TOKEN_PREFIX)
    assert len(first.secret) >= len(TOKEN_PREFIX) + 43
    assert first.secret != second.secret
    assert first.token_hash == hashlib.sha256(first.secret.encode()).digest()
    assert first.secret.startswith(first.prefix)
    assert len(first.prefix) < len(first.secret) // 2


async def test_headers_that_are_not_a_bearer_token_are_refused_without_a_lookup() -> None:
    store, clock = RecordingStore(), Clock()
    authenticator = _authenticator(store, clock)
    assert await _code(authenticator, None) == "AUTH_TOKEN_MISSING"
    assert await _code(authenticator, "") == "AUTH_TOKEN_MISSING"
    assert await _code(authenticator, "Basic dXNlcjpwYXNz") == "AUTH_TOKEN_INVALID"
    assert await _code(authenticator, "Bearer ") == "AUTH_TOKEN_INVALID"
    assert await _code(authenticator, "Bearer not-one-of-ours") == "AUTH_TOKEN_INVALID"
    assert store.lookups == 0


async def test_a_valid_token_gives_the_principal_tenant_and_permissions() -> None:
    store, clock = RecordingStore(), Clock()
    issued = new_token()
    record = store.add(issued.secret, roles=("approver", "developer"), groups=("oncall", "web"))
    identity = await _authenticator(store, clock).authenticate(f"bearer {issued.secret}")
    assert (identity.tenant_id, identity.principal_id, identity.token_id) == (
        record.tenant_id,
        record.principal_id,
        record.token_id,
    )
    assert identity.groups == ("oncall", "web")
    assert store.lookups == 1
    assert "promotion:approve" in identity.permissions
    assert "release:create" in identity.permissions
    assert "principal:read" not in identity.permissions


async def test_unknown_revoked_expired_and_deleted_principal_tokens_are_refused() -> None:
    store, clock = RecordingStore(), Clock()
    authenticator = _authenticator(store, clock, ttl_s=0)
    revoked, expired, orphan, unknown = new_token(), new_token(), new_token(), new_token()
    store.add(revoked.secret, revoked_at=NOW)
    store.add(expired.secret, expires_at=NOW)
    store.add(orphan.secret, principal_deleted_at=NOW)
    assert await _code(authenticator, f"Bearer {unknown.secret}") == "AUTH_TOKEN_INVALID"
    assert await _code(authenticator, f"Bearer {revoked.secret}") == "AUTH_TOKEN_REVOKED"
    assert await _code(authenticator, f"Bearer {expired.secret}") == "AUTH_TOKEN_EXPIRED"
    assert await _code(authenticator, f"Bearer {orphan.secret}") == "AUTH_TOKEN_INVALID"


async def test_expiry_is_checked_on_every_request_even_when_cached() -> None:
    store, clock = RecordingStore(), Clock()
    authenticator = _authenticator(store, clock)
    issued = new_token()
    store.add(issued.secret, expires_at=NOW + timedelta(minutes=5))
    await authenticator.authenticate(f"Bearer {issued.secret}")
    clock.now = NOW + timedelta(minutes=5)
    assert await _code(authenticator, f"Bearer {issued.secret}") == "AUTH_TOKEN_EXPIRED"
    assert store.lookups == 1


async def test_lookups_are_cached_and_forgetting_makes_a_revocation_visible_at_once() -> None:
    store, clock = RecordingStore(), Clock()
    authenticator = _authenticator(store, clock)
    issued = new_token()
    record = store.add(issued.secret)
    for _ in range(3):
        await authenticator.authenticate(f"Bearer {issued.secret}")
    assert store.lookups == 1
    store.add(issued.secret, token_id=record.token_id, revoked_at=NOW)
    await authenticator.authenticate(f"Bearer {issued.secret}")  # still cached: other replicas lag this long
    authenticator.forget_token(record.token_id)
    assert await _code(authenticator, f"Bearer {issued.secret}") == "AUTH_TOKEN_REVOKED"
    assert store.lookups == 2


async def test_a_change_of_roles_or_groups_shows_within_the_ttl_or_at_once_when_forgotten() -> None:
    store, clock = RecordingStore(), Clock()
    moment = [1000.0]
    authenticator = Authenticator(
        store,  # type: ignore[arg-type]
        clock,
        ttl_s=5.0,
        max_entries=100,
        monotonic=lambda: moment[0],
    )
    issued = new_token()
    record = store.add(issued.secret, groups=("web",))
    assert (await authenticator.authenticate(f"Bearer {issued.secret}")).groups == ("web",)

    # Another replica changed the groups: this one answers from its cache until the entry is ttl_s old.
    store.add(issued.secret, token_id=record.token_id, principal_id=record.principal_id, groups=("sre",))
    moment[0] += 4.9
    assert (await authenticator.authenticate(f"Bearer {issued.secret}")).groups == ("web",)
    moment[0] += 0.2
    assert (await authenticator.authenticate(f"Bearer {issued.secret}")).groups == ("sre",)

    # This replica made the change: it forgets the principal's tokens at once.
    store.add(issued.secret, token_id=record.token_id, principal_id=record.principal_id, roles=("viewer",))
    authenticator.forget_principal(record.principal_id)
    identity = await authenticator.authenticate(f"Bearer {issued.secret}")
    assert (identity.roles, identity.groups) == (("viewer",), ())
    assert "release:create" not in identity.permissions
    assert store.lookups == 3


async def test_forgetting_a_principal_drops_all_its_tokens() -> None:
    store, clock = RecordingStore(), Clock()
    authenticator = _authenticator(store, clock)
    principal = uuid.uuid4()
    first, second = new_token(), new_token()
    store.add(first.secret, principal_id=principal)
    store.add(second.secret, principal_id=principal)
    await authenticator.authenticate(f"Bearer {first.secret}")
    await authenticator.authenticate(f"Bearer {second.secret}")
    authenticator.forget_principal(principal)
    await authenticator.authenticate(f"Bearer {first.secret}")
    await authenticator.authenticate(f"Bearer {second.secret}")
    assert store.lookups == 4


async def test_unknown_tokens_are_cached_too_and_the_cache_is_bounded() -> None:
    store, clock = RecordingStore(), Clock()
    authenticator = _authenticator(store, clock, max_entries=2)
    guesses = [new_token().secret for _ in range(3)]
    for guess in guesses:
        await _code(authenticator, f"Bearer {guess}")
    await _code(authenticator, f"Bearer {guesses[2]}")
    assert store.lookups == 3
    await _code(authenticator, f"Bearer {guesses[0]}")  # evicted as least recently used
    assert store.lookups == 4


async def test_uses_are_written_in_one_batch_with_the_latest_time_and_kept_on_failure() -> None:
    store, clock = RecordingStore(), Clock()
    authenticator = _authenticator(store, clock)
    first, second = new_token(), new_token()
    one, two = store.add(first.secret), store.add(second.secret)
    await authenticator.authenticate(f"Bearer {first.secret}")
    clock.now = NOW + timedelta(seconds=10)
    await authenticator.authenticate(f"Bearer {first.secret}")
    await authenticator.authenticate(f"Bearer {second.secret}")
    store.fail_touch = True
    with pytest.raises(ConnectionError):
        await authenticator.flush_usage()
    store.fail_touch = False
    assert await authenticator.flush_usage() == 2
    assert sorted(store.touched[0]) == sorted(
        [(one.tenant_id, one.token_id, clock.now), (two.tenant_id, two.token_id, clock.now)]
    )
    assert await authenticator.flush_usage() == 0
