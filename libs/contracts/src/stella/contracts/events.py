"""The events context: webhooks of outside systems, their deliveries, and the record of public events.

The events service projects internal events onto public ones (see :mod:`stella.contracts.public`), publishes
them on the public stream and delivers them to the tenant's webhooks. Its commands manage webhooks; its queries
read webhooks, their delivery log and the public events already recorded.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Final
from uuid import UUID

from pydantic import Field, StringConstraints

from stella.contracts.envelope import Command, Model, PageRequest, Query

CONTEXT: Final[str] = "events"
"""Context name in subjects."""

CREATE_WEBHOOK: Final[str] = "stella.cmd.events.create_webhook"
"""Command :class:`CreateWebhook` -> :class:`CreatedWebhookView` (the only answer holding the secret)."""
UPDATE_WEBHOOK: Final[str] = "stella.cmd.events.update_webhook"
"""Command :class:`UpdateWebhook` -> :class:`WebhookView`."""
DELETE_WEBHOOK: Final[str] = "stella.cmd.events.delete_webhook"
"""Command :class:`DeleteWebhook`: the webhook and its delivery log are removed."""
REDELIVER: Final[str] = "stella.cmd.events.redeliver"
"""Command :class:`Redeliver` -> :class:`DeliveryView`: the delivery's event is sent to the webhook again."""

GET_WEBHOOK: Final[str] = "stella.rpc.events.get_webhook"
"""Query :class:`GetWebhook` -> :class:`WebhookView`."""
LIST_WEBHOOKS: Final[str] = "stella.rpc.events.list_webhooks"
"""Query :class:`ListWebhooks` -> page of :class:`WebhookView`, oldest first."""
LIST_DELIVERIES: Final[str] = "stella.rpc.events.list_deliveries"
"""Query :class:`ListDeliveries` -> page of :class:`DeliveryView`, newest first."""
LIST_EVENTS: Final[str] = "stella.rpc.events.list_events"
"""Query :class:`ListEvents` -> page of public events (CloudEvents as JSON objects), oldest first."""

SECRET_PREFIX: Final[str] = "whsec_"
"""Prefix of webhook secrets (the Standard Webhooks convention: ``whsec_`` + base64 of the key)."""

MAX_URL_LENGTH: Final[int] = 2048
"""Longest webhook URL accepted."""

TEXT_PATTERN: Final[str] = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
"""Free text a person wrote: no control characters but tab and line breaks (Postgres refuses NUL)."""

Description = Annotated[str, StringConstraints(max_length=500, pattern=TEXT_PATTERN)]
"""A webhook's description."""


class DeliveryStatus(StrEnum):
    """Where a delivery stands."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class WebhookView(Model):
    """A webhook as clients see it; never its secret.

    Attributes:
        event_types: Types (or ``org.stellaops.<context>.*``) it receives; empty: every type.
        enabled: Whether events are delivered to it. A webhook whose deliveries keep failing is disabled.
        disabled_reason: Why it was disabled by the service (None when a person disabled it or it is enabled).
        failing_since: When the current run of failed attempts started (None while deliveries succeed).
        consecutive_failures: Failed attempts since the last success.
    """

    id: UUID
    url: str
    description: str
    event_types: list[str]
    enabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    failing_since: datetime | None
    consecutive_failures: int
    created_by: UUID | None
    created_at: datetime
    updated_at: datetime


class CreatedWebhookView(WebhookView):
    """A new webhook with its signing secret, shown this once."""

    secret: str


class AttemptView(Model):
    """One attempt of a delivery."""

    attempt: int
    started_at: datetime
    duration_ms: float
    status_code: int | None
    error: str | None
    response_excerpt: str | None


class DeliveryView(Model):
    """One event sent (or to be sent) to one webhook, with its attempts."""

    id: UUID
    webhook_id: UUID
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    completed_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    redelivery_of: UUID | None
    attempt_log: list[AttemptView] = Field(default_factory=list)


class CreateWebhook(Command):
    """Subscribe a URL to the tenant's public events; the service makes the secret and checks the URL."""

    url: str = Field(min_length=1, max_length=MAX_URL_LENGTH)
    description: Description = ""
    event_types: list[str] = Field(default_factory=list, max_length=100)
    enabled: bool = True


class UpdateWebhook(Command):
    """Change a webhook; omitted fields keep their value. Enabling a disabled webhook resumes its deliveries."""

    webhook_id: UUID
    url: str | None = Field(default=None, min_length=1, max_length=MAX_URL_LENGTH)
    description: Description | None = None
    event_types: list[str] | None = Field(default=None, max_length=100)
    enabled: bool | None = None


class DeleteWebhook(Command):
    """Delete a webhook and its delivery log."""

    webhook_id: UUID


class Redeliver(Command):
    """Send a delivery's event to its webhook again, as a new delivery."""

    webhook_id: UUID
    delivery_id: UUID


class GetWebhook(Query):
    """Read one webhook."""

    webhook_id: UUID


class ListWebhooks(Query):
    """List the tenant's webhooks."""

    page: PageRequest = Field(default_factory=PageRequest)


class ListDeliveries(Query):
    """A webhook's delivery log, newest first."""

    webhook_id: UUID
    status: DeliveryStatus | None = None
    page: PageRequest = Field(default_factory=PageRequest)


class ListEvents(Query):
    """Public events already recorded, oldest first, optionally about one resource and of some types."""

    resource: str | None = Field(default=None, max_length=200)
    types: list[str] = Field(default_factory=list, max_length=100)
    page: PageRequest = Field(default_factory=PageRequest)
