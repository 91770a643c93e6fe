"""A command names its actor: id, name and display name of the authenticated principal."""

from __future__ import annotations

import uuid

from stella.contracts.approval import CastVote, VoteAction
from stella.gateway.auth import Identity
from stella.gateway.relay import CallContext


def _identity(display_name: str | None) -> Identity:
    return Identity(
        tenant_id=uuid.uuid4(),
        principal_id=uuid.uuid4(),
        principal_name="amy",
        kind="user",
        roles=("approver",),
        groups=(),
        permissions=frozenset(),
        token_id=uuid.uuid4(),
        expires_at=None,
        display_name=display_name,
    )


def test_a_command_carries_the_principals_name_and_display_name() -> None:
    identity = _identity("Amy Example")
    cast = CallContext(identity, uuid.uuid4()).command(CastVote, promotion_id=uuid.uuid4(), action=VoteAction.APPROVED)
    assert (cast.actor_id, cast.actor_name, cast.actor_display_name) == (identity.principal_id, "amy", "Amy Example")


def test_no_display_name_is_none_and_an_overlong_one_is_cut_not_refused() -> None:
    plain = CallContext(_identity(None), uuid.uuid4()).command(
        CastVote, promotion_id=uuid.uuid4(), action=VoteAction.APPROVED
    )
    assert plain.actor_display_name is None
    long = CallContext(_identity("x" * 300), uuid.uuid4()).command(
        CastVote, promotion_id=uuid.uuid4(), action=VoteAction.APPROVED
    )
    assert long.actor_display_name == "x" * 200
