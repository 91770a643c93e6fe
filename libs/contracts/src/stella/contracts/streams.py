"""JetStream stream definitions shared by every service.

Three streams split traffic by kind: events (any number of consumers), commands (one owning service), and
dead letters. Core request/reply reads (``stella.rpc.>``) are not stored in any stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class StreamSpec:
    """What a stream holds and for how long; the kit declares it idempotently at start-up."""

    name: str
    subjects: tuple[str, ...]
    max_age_s: float
    duplicate_window_s: float
    description: str


EVENT_PREFIX: Final[str] = "stella.evt"
"""Prefix of every event subject: ``stella.evt.<context>.<event>``."""

COMMAND_PREFIX: Final[str] = "stella.cmd"
"""Prefix of every command subject: ``stella.cmd.<context>.<command>``."""

RPC_PREFIX: Final[str] = "stella.rpc"
"""Prefix of every request/reply read: ``stella.rpc.<context>.<query>``."""

DLQ_PREFIX: Final[str] = "stella.dlq"
"""Prefix of dead letters: ``stella.dlq.<consumer>.<tenant>`` holds what that consumer could not process of
one tenant's messages (see :func:`dead_letter_subject`)."""

NO_TENANT: Final[str] = "none"
"""The tenant token of a dead letter whose payload names no tenant (it could not even be parsed)."""

EVENTS: Final[StreamSpec] = StreamSpec(
    name="STELLA_EVENTS",
    subjects=(f"{EVENT_PREFIX}.>",),
    max_age_s=30 * 24 * 3600,
    duplicate_window_s=600,
    description="Domain events of every context.",
)
"""Every event, kept 30 days; a 10-minute duplicate window drops an outbox relay's resends."""

COMMANDS: Final[StreamSpec] = StreamSpec(
    name="STELLA_COMMANDS",
    subjects=(f"{COMMAND_PREFIX}.>",),
    max_age_s=7 * 24 * 3600,
    duplicate_window_s=600,
    description="Commands, each handled by the one service that owns its context.",
)
"""Every command, kept 7 days, so a command sent while its service restarts is handled when it is back."""

DEAD_LETTERS: Final[StreamSpec] = StreamSpec(
    name="STELLA_DLQ",
    subjects=(f"{DLQ_PREFIX}.>",),
    max_age_s=30 * 24 * 3600,
    duplicate_window_s=600,
    description="Messages a consumer gave up on, with the error that stopped it.",
)
"""Dead letters, kept 30 days for inspection and replay."""

ALL_STREAMS: Final[tuple[StreamSpec, ...]] = (EVENTS, COMMANDS, DEAD_LETTERS)
"""Every stream the system uses."""


def dead_letter_subject(consumer: str, tenant_id: object | None) -> str:
    """Where a durable consumer named ``<service>-<purpose>`` keeps a message of ``tenant_id`` it gave up on.

    The tenant is part of the subject so one tenant's dead letters are read without scanning the others'.
    """
    return f"{DLQ_PREFIX}.{consumer}.{NO_TENANT if tenant_id is None else tenant_id}"


def dead_letters_filter(consumer: str | None = None, tenant_id: object | None = None) -> str:
    """The subject filter of the dead letters of ``consumer`` and/or ``tenant_id`` (every one when None)."""
    return f"{DLQ_PREFIX}.{consumer or '*'}.{'*' if tenant_id is None else tenant_id}"


def rpc_subject(context: str, query: str) -> str:
    """Build ``stella.rpc.<context>.<query>``."""
    return f"{RPC_PREFIX}.{context}.{query}"


def health_subject(service: str) -> str:
    """The request/reply subject a headless service answers health checks on.

    Health lives under its own ``stella.rpc.health.`` prefix so it never overlaps a context's queries.
    """
    return f"{RPC_PREFIX}.health.{service}"


HEADER_REPLY_TO: Final[str] = "Stella-Reply-To"
"""Header of a command naming the core NATS subject its result is published to once handled."""

HEADER_MSG_ID: Final[str] = "Nats-Msg-Id"
"""JetStream de-duplication header; always set to the message's ``message_id``."""

HEADER_ERROR: Final[str] = "Stella-Error"
"""Header of a dead letter: why the consumer gave up."""

HEADER_CONSUMER: Final[str] = "Stella-Consumer"
"""Header of a dead letter: the durable consumer that gave up."""

HEADER_DELIVERIES: Final[str] = "Stella-Deliveries"
"""Header of a dead letter: how many times the message was delivered."""

HEADER_ORIGINAL_SUBJECT: Final[str] = "Stella-Original-Subject"
"""Header of a dead letter: the subject the message was first published on."""

HEADER_ORIGINAL_MSG_ID: Final[str] = "Stella-Original-Msg-Id"
"""Header of a dead letter: the ``Nats-Msg-Id`` the message was first published with."""

HEADER_REPLAY_OF: Final[str] = "Stella-Replay-Of"
"""Header of a replayed message: the dead letter (``<stream>:<sequence>``) it was replayed from."""
