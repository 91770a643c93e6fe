"""Reply payloads shaped like the release service's views, for the stand-in service."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

DIGEST = "sha256:" + "a" * 64


def _now() -> str:
    # Pydantic writes UTC as "Z", as the services do.
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def component(name: str = "web", **changes: Any) -> dict[str, Any]:
    """A ``ComponentView`` as JSON."""
    view: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "name": name,
        "display_name": name,
        "image_repository": f"registry.test/{name}",
        "versioning_strategy": {"type": "semver"},
        "default_channel": "stable",
        "registry_credential_ref": None,
        "created_at": _now(),
        "updated_at": _now(),
    }
    view.update(changes)
    return view


def version(component_id: str, tag: str = "1.0.0", **changes: Any) -> dict[str, Any]:
    """A ``VersionView`` as JSON."""
    view: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "component_id": component_id,
        "tag": tag,
        "digest": DIGEST,
        "semver": tag,
        "channel": "stable",
        "created_at": _now(),
        "updated_at": _now(),
    }
    view.update(changes)
    return view


def release(name: str = "r1", status: str = "draft", **changes: Any) -> dict[str, Any]:
    """A ``ReleaseView`` as JSON."""
    view: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "name": name,
        "display_name": name,
        "status": status,
        "components": [
            {
                "component_id": str(uuid.uuid4()),
                "name": "web",
                "image_repository": "registry.test/web",
                "digest": DIGEST,
                "tag": "1.0.0",
                "semver": "1.0.0",
            }
        ],
        "source_ref": {},
        "created_by": None,
        "created_at": _now(),
        "updated_at": _now(),
        "ready_at": None,
        "deprecated_at": None,
        "deprecation_reason": None,
    }
    view.update(changes)
    return view


def page(items: list[dict[str, Any]], next_page_token: str | None = None) -> dict[str, Any]:
    """A ``Page`` as JSON."""
    return {"items": items, "next_page_token": next_page_token}
