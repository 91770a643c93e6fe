"""``/api/v1/asyncapi.json``: the AsyncAPI 3 document of the public events, beside the OpenAPI document."""

from __future__ import annotations

from functools import cache
from typing import Any

from litestar import Controller, get

from stella.contracts.public import asyncapi


@cache
def _document() -> dict[str, Any]:
    return asyncapi.document()


class AsyncAPIController(Controller):
    """The public events' description; no token needed."""

    path = "/api/v1/asyncapi.json"
    include_in_schema = False
    opt = {"exclude_from_auth": True}

    @get("/", operation_id="getAsyncApiDocument", media_type="application/json", sync_to_thread=False)
    def document(self) -> dict[str, Any]:
        """The AsyncAPI document: every public event type, its NATS channel and the JSON Schema of its data."""
        return _document()
