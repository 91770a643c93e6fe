"""The public event envelope: CloudEvents 1.0 in its JSON format, and where public events are published.

A public event is what an outside system sees of what Stella did. It is a CloudEvent (JSON event format,
https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/formats/json-format.md) with these attributes:

``specversion``  ``1.0``.
``id``           unique per event; the same event delivered again (NATS, webhook retry, SSE resume) has the same id.
``source``       ``/tenants/<tenant id>/<API path of the resource>``, e.g. ``/tenants/<t>/promotions/<id>``.
``type``         ``org.stellaops.<context>.<event>``, e.g. ``org.stellaops.promotion.approved``.
``subject``      the id of the resource the event is about (the last part of ``source``'s resource).
``time``         when it happened (RFC 3339, UTC).
``datacontenttype``  ``application/json``.
``dataschema``   ``urn:stellaops:schema:<type>:v<version>``; the AsyncAPI document names each schema.
``tenantid``     extension: the tenant's id.
``traceparent``  extension (CloudEvents distributed tracing): the W3C trace context, when tracing is on.
``data``         ids and the fields a subscriber needs; never a secret.

On NATS, public events live on subjects ``stella.public.<tenant id>.<context>.<event>`` of the stream
``STELLA_PUBLIC``, so a subscriber (or a NATS permission) names one tenant's events with
``stella.public.<tenant id>.>``. Messages are in the structured content mode of the CloudEvents NATS binding:
the payload is the JSON event, ``Content-Type`` says ``application/cloudevents+json``, ``Nats-Msg-Id`` is the
event's id.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Final, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from stella.contracts.streams import PUBLIC_PREFIX

SPEC_VERSION: Final[str] = "1.0"
"""CloudEvents specification version of every public event."""

TYPE_PREFIX: Final[str] = "org.stellaops."
"""Prefix of every public event type: ``org.stellaops.<context>.<event>``."""

MEDIA_TYPE: Final[str] = "application/cloudevents+json"
"""Media type of a public event in the JSON event format (NATS header, webhook body, SSE data)."""

DATA_CONTENT_TYPE: Final[str] = "application/json"
"""``datacontenttype`` of every public event."""

HEADER_CONTENT_TYPE: Final[str] = "Content-Type"
"""NATS header of a public event naming its format (:data:`MEDIA_TYPE`)."""

HEADER_TRACEPARENT: Final[str] = "traceparent"
"""NATS header (and CloudEvents extension) carrying the W3C trace context."""

_TYPE: Final = re.compile(r"^org\.stellaops\.([a-z][a-z_]*)\.([a-z][a-z_]*)$")
_TRACEPARENT: Final = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def split_type(event_type: str) -> tuple[str, str]:
    """Split ``org.stellaops.<context>.<event>`` into ``(context, event)``.

    Raises:
        ValueError: when ``event_type`` is not of that shape.
    """
    match = _TYPE.match(event_type)
    if match is None:
        raise ValueError(f"{event_type!r} is not a public event type (org.stellaops.<context>.<event>)")
    return match.group(1), match.group(2)


def public_subject(tenant_id: UUID, event_type: str) -> str:
    """The subject a tenant's event of ``event_type`` is published on: ``stella.public.<tenant>.<ctx>.<event>``."""
    context, event = split_type(event_type)
    return f"{PUBLIC_PREFIX}.{tenant_id}.{context}.{event}"


def tenant_subjects(tenant_id: UUID) -> str:
    """The wildcard subject of every public event of one tenant: ``stella.public.<tenant>.>``."""
    return f"{PUBLIC_PREFIX}.{tenant_id}.>"


def source_of(tenant_id: UUID, resource: str) -> str:
    """The ``source`` of an event about ``resource`` (an API path without ``/api/v1``, e.g. ``promotions/<id>``)."""
    return f"/tenants/{tenant_id}/{resource}"


def dataschema_of(event_type: str, version: int) -> str:
    """The ``dataschema`` URI of ``event_type``'s data at ``version``."""
    return f"urn:stellaops:schema:{event_type}:v{version}"


class CloudEvent(BaseModel):
    """A public event in the CloudEvents 1.0 JSON format (see the module's description for each attribute).

    Serialise it with :meth:`to_json`: optional attributes that are not set are left out, as the format asks.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1, max_length=200)
    source: str = Field(min_length=1, max_length=1000)
    type: str = Field(pattern=_TYPE.pattern)
    subject: str | None = Field(default=None, max_length=1000)
    time: AwareDatetime
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: str = Field(min_length=1, max_length=1000)
    tenantid: str = Field(min_length=1, max_length=100)
    traceparent: str | None = Field(default=None, pattern=_TRACEPARENT.pattern)
    data: dict[str, Any]

    @field_validator("time")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    def to_json(self) -> str:
        """The event in the CloudEvents JSON format (unset optional attributes omitted)."""
        return self.model_dump_json(exclude_none=True)

    @property
    def resource(self) -> str:
        """The resource path of ``source`` without the tenant part (``promotions/<id>``)."""
        prefix = f"/tenants/{self.tenantid}/"
        return self.source[len(prefix) :] if self.source.startswith(prefix) else self.source
