"""Public events: what outside systems see of Stella, as CloudEvents on NATS, webhooks and a live stream.

:mod:`~stella.contracts.public.cloudevents` holds the envelope, the stream and the subject grammar;
:mod:`~stella.contracts.public.catalogue` the table of public event types and their data;
:mod:`~stella.contracts.public.asyncapi` the AsyncAPI document generated from that table.
"""

from stella.contracts.public.catalogue import (
    BY_INTERNAL,
    BY_TYPE,
    CATALOGUE,
    MAX_TYPE_FILTERS,
    RESOURCE_KINDS,
    WEBHOOK_DISABLED,
    PublicData,
    PublicEventSpec,
    check_resource_filter,
    check_type_filter,
    related_resources,
    to_cloudevent,
    type_filter_matches,
)
from stella.contracts.public.cloudevents import (
    MEDIA_TYPE,
    CloudEvent,
    public_subject,
    split_type,
    tenant_subjects,
)
from stella.contracts.streams import PUBLIC, PUBLIC_PREFIX

__all__ = [
    "BY_INTERNAL",
    "BY_TYPE",
    "CATALOGUE",
    "MAX_TYPE_FILTERS",
    "MEDIA_TYPE",
    "PUBLIC",
    "PUBLIC_PREFIX",
    "RESOURCE_KINDS",
    "WEBHOOK_DISABLED",
    "CloudEvent",
    "PublicData",
    "PublicEventSpec",
    "check_resource_filter",
    "check_type_filter",
    "public_subject",
    "related_resources",
    "split_type",
    "tenant_subjects",
    "to_cloudevent",
    "type_filter_matches",
]
