"""``/api/v1/openapi.json``: the OpenAPI 3.1 document of the API, beside the docs page at ``/api/docs``."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get
from litestar.enums import OpenAPIMediaType


class OpenAPIController(Controller):
    """The API description; no token needed."""

    path = "/api/v1/openapi.json"
    include_in_schema = False
    opt = {"exclude_from_auth": True}

    @get("/", operation_id="getOpenApiDocument", media_type=OpenAPIMediaType.OPENAPI_JSON, sync_to_thread=False)
    def document(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        """The OpenAPI document (the same one the docs page shows)."""
        return request.app.openapi_schema.to_schema()
