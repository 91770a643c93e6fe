"""Dead letters: what consumers gave up on, read by tenant and replayed with their original message id.

A consumer keeps a message it gave up on at ``stella.dlq.<consumer>.<tenant>`` in the dead-letter stream
(see :func:`stella.kit.broker.dead_letter`), so one tenant's dead letters are read with a subject filter and
never mixed with another's. A dead letter's id is its sequence in that stream.

Replaying publishes the message again on its original subject with its payload unchanged, so its
``message_id``, which the consumers' inboxes de-duplicate on, is the original one: a message that was in fact
handled meanwhile is answered from the inbox, one that was not is handled once. The replay goes out with a
``Nats-Msg-Id`` naming the dead letter (the original one may still be inside the stream's duplicate window,
which would drop the replay), so two replays of one dead letter at the same moment publish it once. The dead
letter is then removed: a replayed dead letter cannot be replayed again.

An event is replayed on its event subject, so every consumer of that subject sees it again; those that
handled it already drop it in their inbox (kept 7 days).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import APIError, NotFoundError

from stella.contracts.streams import (
    DEAD_LETTERS,
    DLQ_PREFIX,
    HEADER_CONSUMER,
    HEADER_DELIVERIES,
    HEADER_ERROR,
    HEADER_MSG_ID,
    HEADER_ORIGINAL_MSG_ID,
    HEADER_ORIGINAL_SUBJECT,
    HEADER_REPLAY_OF,
    HEADER_REPLY_TO,
    NO_TENANT,
    dead_letters_filter,
)
from stella.kit.naming import Names

_DEAD_LETTER_HEADERS: Final = frozenset(
    {
        HEADER_MSG_ID,
        HEADER_ERROR,
        HEADER_CONSUMER,
        HEADER_DELIVERIES,
        HEADER_ORIGINAL_SUBJECT,
        HEADER_ORIGINAL_MSG_ID,
        HEADER_REPLY_TO,
        HEADER_REPLAY_OF,
    }
)


@dataclass(frozen=True)
class DeadLetter:
    """One message a consumer gave up on.

    Attributes:
        id: Its sequence in the dead-letter stream.
        consumer: The durable consumer that gave up.
        tenant_id: The tenant its payload names (None when it names none).
        subject: The (contract) subject it was published on.
        error: Why the consumer gave up.
        deliveries: How often it had been delivered.
        dead_lettered_at: When it was dead-lettered.
        message_id: The ``message_id`` its payload names, if any.
        payload: The message as it was published.
        headers: Its headers, with the dead-letter ones.
    """

    id: int
    consumer: str
    tenant_id: uuid.UUID | None
    subject: str
    error: str
    deliveries: int
    dead_lettered_at: datetime | None
    message_id: uuid.UUID | None
    payload: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def payload_json(self) -> Any:
        """The payload as JSON, or its text when it is not JSON."""
        try:
            return json.loads(self.payload)
        except ValueError:
            return self.payload.decode("utf-8", errors="replace")


def _no_message(exc: APIError) -> bool:
    # Servers answer a missing message with 404 (10037) or, when deleting, 500 "no message found" (10057).
    return isinstance(exc, NotFoundError) or exc.err_code in (10037, 10057)


def _message_id(payload: bytes) -> uuid.UUID | None:
    try:
        data = json.loads(payload)
        return uuid.UUID(str(data["message_id"])) if isinstance(data, dict) else None
    except (ValueError, KeyError, TypeError):
        return None


class DeadLetterStore:
    """Reads and replays the dead letters of one installation (one NATS namespace).

    Args:
        js: A JetStream context.
        names: The installation's namespace.
    """

    def __init__(self, js: JetStreamContext, names: Names | None = None) -> None:
        self.js = js
        self.names = names or Names()
        self.stream = self.names.stream(DEAD_LETTERS)
        self._dlq_prefix = self.names.subject(f"{DLQ_PREFIX}.")

    def _letter(self, raw: RawStreamMsg) -> DeadLetter | None:
        subject = raw.subject or ""
        if not subject.startswith(self._dlq_prefix) or raw.seq is None:
            return None
        parts = subject.removeprefix(self._dlq_prefix).split(".")
        if len(parts) != 2:
            return None  # a dead letter of an older layout, without its tenant
        consumer, tenant = parts
        headers = {str(k): str(v) for k, v in (raw.headers or {}).items()}
        payload = raw.data or b""
        try:
            deliveries = int(headers.get(HEADER_DELIVERIES, "0"))
        except ValueError:
            deliveries = 0
        tenant_id = None
        if tenant != NO_TENANT:
            with contextlib.suppress(ValueError):
                tenant_id = uuid.UUID(tenant)
        return DeadLetter(
            id=raw.seq,
            consumer=headers.get(HEADER_CONSUMER, consumer),
            tenant_id=tenant_id,
            subject=headers.get(HEADER_ORIGINAL_SUBJECT, ""),
            error=headers.get(HEADER_ERROR, ""),
            deliveries=deliveries,
            dead_lettered_at=raw.time,
            message_id=_message_id(payload),
            payload=payload,
            headers=headers,
        )

    async def list(
        self, tenant_id: uuid.UUID, *, after: int = 0, limit: int = 50, consumer: str | None = None
    ) -> list[DeadLetter]:
        """Up to ``limit`` dead letters of ``tenant_id`` with an id above ``after``, oldest first.

        Args:
            tenant_id: Whose dead letters.
            after: The id of the last dead letter of the previous page (0 for the first page).
            limit: Most dead letters returned.
            consumer: Only this consumer's.
        """
        wanted = self.names.subject(dead_letters_filter(consumer, tenant_id))
        found: list[DeadLetter] = []
        sequence = after + 1
        while len(found) < limit:
            try:
                raw = await self.js.get_msg(self.stream, seq=sequence, subject=wanted, next=True)
            except APIError as exc:
                if _no_message(exc):
                    break
                raise
            if raw.seq is None:
                break
            letter = self._letter(raw)
            if letter is not None:
                found.append(letter)
            sequence = raw.seq + 1
        return found

    async def get(self, tenant_id: uuid.UUID, letter_id: int) -> DeadLetter | None:
        """The dead letter ``letter_id`` when it is one of ``tenant_id``'s (another tenant's looks missing)."""
        if letter_id < 1:
            return None
        try:
            raw = await self.js.get_msg(self.stream, seq=letter_id)
        except APIError as exc:
            if _no_message(exc):
                return None
            raise
        letter = self._letter(raw)
        if letter is None or letter.tenant_id != tenant_id:
            return None
        return letter

    async def replay(self, tenant_id: uuid.UUID, letter_id: int) -> DeadLetter | None:
        """Publish the dead letter again on its original subject and remove it (see the module's description).

        Returns:
            The dead letter that was replayed, or None when ``tenant_id`` has no dead letter ``letter_id``
            (it was never there, belongs to another tenant, or was replayed already).
        """
        letter = await self.get(tenant_id, letter_id)
        if letter is None or not letter.subject:
            return None
        headers = {k: v for k, v in letter.headers.items() if k not in _DEAD_LETTER_HEADERS}
        marker = f"{self.stream}:{letter.id}"
        headers[HEADER_MSG_ID] = f"replay:{marker}"
        headers[HEADER_REPLAY_OF] = marker
        await self.js.publish(self.names.subject(letter.subject), letter.payload, headers=headers, timeout=5)
        try:
            await self.js.delete_msg(self.stream, letter.id)
        except APIError as exc:
            # A replay of the same dead letter at the same moment removed it first; it published nothing more.
            if not _no_message(exc):
                raise
        return letter

    async def count(self, consumer: str | None = None) -> int:
        """How many dead letters the installation holds (of ``consumer``, or of every consumer)."""
        wanted = self.names.subject(f"{DLQ_PREFIX}.{consumer}.>" if consumer else f"{DLQ_PREFIX}.>")
        info = await self.js.stream_info(self.stream, subjects_filter=wanted)
        return sum((info.state.subjects or {}).values())
