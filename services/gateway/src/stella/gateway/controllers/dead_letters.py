"""``/api/v1/admin/dead-letters``: the messages services gave up on, and their replay.

A consumer gives up on a message that keeps failing for a reason of its own (a bug, data the service cannot
handle), never because a database or NATS was away (see :mod:`stella.kit.faults`). Operators and tenant
admins see their tenant's dead letters with the error that stopped each, and replay one once the cause is
fixed: it is published again with its original message id, so a service that handled it meanwhile answers
from its inbox and one that did not handles it once. A replayed dead letter is removed.
"""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import Parameter

from stella.gateway.auth import Identity, require
from stella.gateway.dependencies import problems
from stella.gateway.pagination import PageParams, decode_page_token
from stella.gateway.permissions import Action, Resource
from stella.gateway.problems import ProblemError
from stella.gateway.runtime import Runtime
from stella.gateway.schemas import DeadLetterOut, DeadLetterPage, ReplayOut
from stella.kit.deadletters import DeadLetter
from stella.kit.pagination import encode_cursor, int64

BASE = "/api/v1/admin/dead-letters"
_ID = Parameter(description="Dead letter id", ge=1, le=2**63 - 1)


def _out(letter: DeadLetter) -> DeadLetterOut:
    return DeadLetterOut(
        id=letter.id,
        consumer=letter.consumer,
        subject=letter.subject,
        message_id=letter.message_id,
        error=letter.error,
        deliveries=letter.deliveries,
        dead_lettered_at=letter.dead_lettered_at,
        payload=letter.payload_json(),
    )


def _not_found(letter_id: int) -> ProblemError:
    return ProblemError(404, "RES_NOT_FOUND", f"No dead letter {letter_id} (it may have been replayed already).")


class DeadLetterController(Controller):
    """Dead letters of the caller's tenant."""

    path = BASE
    tags = ["dead-letters"]

    @get(
        "/",
        operation_id="listDeadLetters",
        summary="List dead letters",
        guards=[require(Resource.DEAD_LETTER, Action.READ)],
        responses=problems(400, 403),
    )
    async def list_dead_letters(
        self,
        identity: NamedDependency[Identity],
        runtime: NamedDependency[Runtime],
        page: NamedDependency[PageParams],
        consumer: str | None = Parameter(
            default=None,
            pattern=r"^[a-z][a-z0-9]*-[a-z0-9-]+$",
            max_length=100,
            description="Only this consumer's, e.g. promotion-commands.",
        ),
    ) -> DeadLetterPage:
        """List the tenant's dead letters, oldest first."""
        cursor = decode_page_token(page.token, int64, kind="dead-letters")
        after = cursor[0] if cursor else 0
        letters = await runtime.get_dead_letters().list(
            identity.tenant_id, after=after, limit=page.size + 1, consumer=consumer
        )
        items = letters[: page.size]
        token = encode_cursor(items[-1].id, kind="dead-letters") if len(letters) > page.size else None
        return DeadLetterPage(items=[_out(letter) for letter in items], next_page_token=token)

    @get(
        "/{letter_id:int}",
        operation_id="getDeadLetter",
        summary="Get a dead letter",
        guards=[require(Resource.DEAD_LETTER, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def get_dead_letter(
        self,
        identity: NamedDependency[Identity],
        runtime: NamedDependency[Runtime],
        letter_id: int = _ID,
    ) -> DeadLetterOut:
        """One dead letter of the tenant."""
        letter = await runtime.get_dead_letters().get(identity.tenant_id, letter_id)
        if letter is None:
            raise _not_found(letter_id)
        return _out(letter)

    @post(
        "/{letter_id:int}/replay",
        operation_id="replayDeadLetter",
        summary="Replay a dead letter",
        status_code=202,
        guards=[require(Resource.DEAD_LETTER, Action.UPDATE)],
        responses=problems(400, 403, 404),
    )
    async def replay_dead_letter(
        self,
        identity: NamedDependency[Identity],
        runtime: NamedDependency[Runtime],
        letter_id: int = _ID,
    ) -> ReplayOut:
        """Publish the message again with its original message id and remove the dead letter.

        The service handles it once (or answers from its inbox if it handled it meanwhile); a second replay
        of the same dead letter is a 404.
        """
        letter = await runtime.get_dead_letters().replay(identity.tenant_id, letter_id)
        if letter is None:
            raise _not_found(letter_id)
        return ReplayOut(id=letter.id, subject=letter.subject, message_id=letter.message_id)
