"""The AsyncAPI 3 document of the public events, generated from the catalogue.

    python -m stella.contracts.public.asyncapi              # print the document
    python -m stella.contracts.public.asyncapi --write FILE # write it
    python -m stella.contracts.public.asyncapi --check FILE # exit 1 when FILE differs from the catalogue

The gateway serves the same document at ``GET /api/v1/asyncapi.json``; ``docs/asyncapi.json`` is a checked-in
copy that ``make lint`` keeps in step with the catalogue. Each public event type is a channel (its NATS subject
with the tenant as a parameter), an operation (Stella sends it) and a message whose payload is the CloudEvent
with that type's ``data`` schema. The data schemas are JSON Schemas generated from the catalogue's models.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from pydantic.json_schema import models_json_schema

from stella.contracts.public.catalogue import CATALOGUE, PublicEventSpec
from stella.contracts.public.cloudevents import DATA_CONTENT_TYPE, MEDIA_TYPE
from stella.contracts.streams import PUBLIC_PREFIX

ASYNCAPI_VERSION: Final[str] = "3.0.0"
"""Version of the AsyncAPI specification the document follows."""

DOCUMENT_VERSION: Final[str] = "1.0.0"
"""Version of the public event API; the major part changes only with an incompatible change."""

_REF: Final[str] = "#/components/schemas/{model}"

_DESCRIPTION: Final[str] = (
    "Public events of Stella, the release orchestrator, as CloudEvents 1.0 in the JSON event format. "
    "The same events, with the same ids, reach outside systems three ways: on NATS subjects "
    f"`{PUBLIC_PREFIX}.<tenant id>.<context>.<event>` of the JetStream stream `STELLA_PUBLIC` (a NATS user "
    f"allowed to subscribe to `{PUBLIC_PREFIX}.<tenant id>.>` sees one tenant's events and nothing else); as "
    "webhooks signed by the Standard Webhooks convention (`webhook-id`, `webhook-timestamp`, "
    "`webhook-signature`; manage them at `/api/v1/webhooks`); and as Server-Sent Events at "
    "`GET /api/v1/events/stream`, resumable with `Last-Event-ID`. An installation with a NATS namespace puts "
    "the subjects under `stella.<namespace>.public.`. An event may arrive more than once (a redelivery, a "
    "webhook retry): its `id` is the same each time."
)


def _type_name(spec: PublicEventSpec[Any]) -> str:
    """A name for ``spec`` usable as a component key: ``promotion.rolled_back`` -> ``PromotionRolledBack``."""
    return "".join(part.capitalize() for part in f"{spec.context}_{spec.event}".split("_"))


def _cloudevent_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "A CloudEvent 1.0 in the JSON event format, as Stella publishes it.",
        "required": [
            "specversion",
            "id",
            "source",
            "type",
            "time",
            "datacontenttype",
            "dataschema",
            "tenantid",
            "data",
        ],
        "properties": {
            "specversion": {"type": "string", "const": "1.0"},
            "id": {"type": "string", "minLength": 1, "description": "Unique per event; repeated deliveries keep it."},
            "source": {
                "type": "string",
                "format": "uri-reference",
                "description": "/tenants/<tenant id>/<API path of the resource>, e.g. /tenants/<t>/promotions/<id>.",
            },
            "type": {"type": "string", "pattern": r"^org\.stellaops\.[a-z_]+\.[a-z_]+$"},
            "subject": {"type": "string", "description": "The id of the resource the event is about."},
            "time": {"type": "string", "format": "date-time"},
            "datacontenttype": {"type": "string", "const": DATA_CONTENT_TYPE},
            "dataschema": {"type": "string", "format": "uri"},
            "tenantid": {"type": "string", "format": "uuid", "description": "Extension: the tenant's id."},
            "traceparent": {
                "type": "string",
                "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                "description": "Extension (CloudEvents distributed tracing): W3C trace context, when tracing is on.",
            },
            "data": {"type": "object"},
        },
    }


def document() -> dict[str, Any]:
    """Build the AsyncAPI 3 document of every public event type in :data:`CATALOGUE`."""
    models = sorted({spec.data for spec in CATALOGUE}, key=lambda model: model.__name__)
    _, definitions = models_json_schema([(model, "serialization") for model in models], ref_template=_REF)
    schemas: dict[str, Any] = {"CloudEvent": _cloudevent_schema()}
    schemas.update(dict(sorted(definitions.get("$defs", {}).items())))

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for spec in CATALOGUE:
        name = _type_name(spec)
        key = name[0].lower() + name[1:]
        schemas[f"{name}Event"] = {
            "allOf": [
                {"$ref": _REF.format(model="CloudEvent")},
                {
                    "type": "object",
                    "properties": {
                        "type": {"const": spec.type},
                        "dataschema": {"const": spec.dataschema},
                        "data": {"$ref": _REF.format(model=spec.data.__name__)},
                    },
                },
            ]
        }
        messages[name] = {
            "name": spec.type,
            "title": spec.type,
            "summary": spec.summary,
            "contentType": MEDIA_TYPE,
            "headers": {
                "type": "object",
                "properties": {
                    "Content-Type": {"type": "string", "const": MEDIA_TYPE},
                    "Nats-Msg-Id": {"type": "string", "description": "The event's id (JetStream de-duplication)."},
                    "traceparent": {"type": "string", "description": "W3C trace context, when tracing is on."},
                },
            },
            "payload": {"$ref": _REF.format(model=f"{name}Event")},
            "x-dataschema": spec.dataschema,
        }
        channels[key] = {
            "address": f"{PUBLIC_PREFIX}.{{tenantId}}.{spec.context}.{spec.event}",
            "title": spec.type,
            "summary": spec.summary,
            "parameters": {"tenantId": {"description": "The id of the tenant whose events the channel carries."}},
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        operations[f"send{name}"] = {
            "action": "send",
            "title": f"Publish {spec.type}",
            "summary": spec.summary,
            "channel": {"$ref": f"#/channels/{key}"},
            "messages": [{"$ref": f"#/channels/{key}/messages/{name}"}],
        }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Stella public events",
            "version": DOCUMENT_VERSION,
            "description": _DESCRIPTION,
        },
        "defaultContentType": MEDIA_TYPE,
        "servers": {
            "nats": {
                "host": "{host}",
                "protocol": "nats",
                "description": "The installation's NATS server (JetStream stream STELLA_PUBLIC).",
                "variables": {"host": {"default": "127.0.0.1:4222", "description": "host:port of the NATS server"}},
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }


def render() -> str:
    """The document as the text ``docs/asyncapi.json`` holds (sorted keys would lose the reading order)."""
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Print, write or check the document; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m stella.contracts.public.asyncapi", description=__doc__.splitlines()[0]
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", type=Path, metavar="FILE", help="write the document to FILE")
    group.add_argument("--check", type=Path, metavar="FILE", help="fail when FILE is not the current document")
    args = parser.parse_args(argv)
    text = render()
    if args.write is not None:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text, encoding="utf-8")
        return 0
    if args.check is not None:
        current = args.check.read_text(encoding="utf-8") if args.check.exists() else ""
        if current != text:
            print(
                f"{args.check} is out of date with the public event catalogue; regenerate it with `make asyncapi`",
                file=sys.stderr,
            )
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
