"""The envelope every Stella message carries, and the reply shape of commands and queries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, Self, TypeVar
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator


def utcnow() -> datetime:
    """Return the current time in UTC (the only clock contracts use, for defaults)."""
    return datetime.now(UTC)


MessageT = TypeVar("MessageT", bound="Message")


class Model(BaseModel):
    """Frozen, strict-shaped base for every payload part: unknown fields are refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Message(Model):
    """Base of every command, event and query.

    Attributes:
        message_id: Unique id of this message; the de-duplication key (``Nats-Msg-Id``, inbox rows).
        occurred_at: When the message was created, in UTC.
        tenant_id: The tenant the message belongs to; every handler filters by it.
        correlation_id: Id shared by every message caused by one user request.
        causation_id: Id of the message (or request) that caused this one.
        schema_version: Version of this message's payload shape; old versions are upcast on read.
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    message_id: UUID = Field(default_factory=uuid4)
    occurred_at: AwareDatetime = Field(default_factory=utcnow)
    tenant_id: UUID
    correlation_id: UUID
    causation_id: UUID | None = None
    schema_version: int = 1

    @field_validator("occurred_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    def caused(self, cls: type[MessageT], **fields: Any) -> MessageT:
        """Build a message of type ``cls`` caused by this one (same tenant and correlation)."""
        return cls(
            tenant_id=self.tenant_id,
            correlation_id=self.correlation_id,
            causation_id=self.message_id,
            **fields,
        )

    @classmethod
    def upcast(cls, payload: dict[str, Any]) -> dict[str, Any]:
        """Turn an older payload into the current shape. Override when ``SCHEMA_VERSION`` grows."""
        return payload

    @classmethod
    def parse(cls, payload: dict[str, Any] | bytes | str) -> Self:
        """Validate a wire payload, upcasting older schema versions first."""
        if isinstance(payload, bytes | str):
            return cls.model_validate_json(payload)
        return cls.model_validate(cls.upcast(dict(payload)))


class ErrorDetail(Model):
    """A business or validation error as a service reports it; the gateway turns it into problem+json.

    Attributes:
        code: Stable machine-readable code, e.g. ``REL_UNKNOWN_TAG`` (prefixes in the API reference).
        status: The HTTP status the error maps to (400, 404, 409, 422, 502, 503...).
        title: Short summary that does not change between occurrences.
        detail: Human explanation of this occurrence.
        errors: Field-level problems: ``[{"loc": [...], "msg": "..."}]``.
    """

    code: str
    status: int
    title: str
    detail: str = ""
    errors: list[dict[str, Any]] = Field(default_factory=list)


class Reply(Model):
    """What a command or a query answers: data on success, an error otherwise."""

    ok: bool
    data: Any = None
    error: ErrorDetail | None = None

    @classmethod
    def success(cls, data: Any = None) -> Reply:
        """A successful reply carrying ``data`` (JSON-compatible)."""
        return cls(ok=True, data=data)

    @classmethod
    def failure(cls, error: ErrorDetail) -> Reply:
        """A failed reply carrying ``error``."""
        return cls(ok=False, error=error)


class Query(Message):
    """Base of request/reply reads (``stella.rpc.<context>.<query>``)."""


class Page(Model):
    """One page of a list: items in a deterministic order and the cursor of the next page."""

    items: list[Any]
    next_page_token: str | None = None


class PageRequest(Model):
    """Cursor pagination of a list query (reference §8: default 50, max 500)."""

    page_size: int = Field(default=50, ge=1, le=500)
    page_token: str | None = Field(default=None, max_length=512)


class Command(Message):
    """Base of commands (``stella.cmd.<context>.<command>``): imperative, handled by exactly one service.

    Attributes:
        actor_id: The principal on whose behalf the command is sent (None for the system itself).
        actor_name: That principal's name (its login name), as the gateway authenticated it; travels with the
            command so that records of who acted (votes, evidence) name the principal without asking back.
        actor_display_name: That principal's display name, when it has one.
    """

    actor_id: UUID | None = None
    actor_name: str | None = Field(default=None, max_length=200)
    actor_display_name: str | None = Field(default=None, max_length=200)


class Event(Message):
    """Base of events (``stella.evt.<context>.<event>``): past tense, any number of consumers."""
