"""``/api/v1/openapi.json``: the OpenAPI 3.1 document of the API, beside the docs page at ``/api/docs``.

The document publishes what the gateway enforces. Litestar derives component schemas itself and drops
some constraints of optional and list fields (the pattern of ``semver: Semver | None``, of each group name
in ``groups: list[Name]``); :func:`openapi_document` replaces every request and response body schema
with pydantic's own JSON schema of the model, which is what validates the body.
"""

from __future__ import annotations

from typing import Any, Literal

from litestar import Controller, Litestar, Request, get
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.enums import OpenAPIMediaType
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin
from pydantic import BaseModel

from stella.gateway.schemas import RequestBody, ResponseBody

# The documents already processed, by their plugin (the plugin caches its document; it takes no attributes).
_published: dict[int, dict[str, Any]] = {}


def _models(base: type[BaseModel]) -> dict[str, type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {}
    pending = list(base.__subclasses__())
    while pending:
        model = pending.pop()
        found[model.__name__] = model
        pending.extend(model.__subclasses__())
    return found


def publish_enforced_schemas(document: dict[str, Any]) -> None:
    """Replace the body schemas of ``document`` with the pydantic JSON schemas that validate them (in place)."""
    schemas: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    modes: tuple[tuple[type[BaseModel], Literal["validation", "serialization"]], ...] = (
        (RequestBody, "validation"),
        (ResponseBody, "serialization"),
    )
    for base, mode in modes:
        for name, model in _models(base).items():
            if name not in schemas:
                continue
            schema = model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}", mode=mode)
            for def_name, definition in schema.pop("$defs", {}).items():
                schemas.setdefault(def_name, definition)
            schemas[name] = schema


def openapi_document(app: Litestar) -> dict[str, Any]:
    """The application's OpenAPI document as served (built once, with :func:`publish_enforced_schemas`)."""
    plugin = app.plugins.get(OpenAPIPlugin)
    document = plugin.provide_openapi_schema()
    if _published.get(id(plugin)) is not document:
        publish_enforced_schemas(document)
        _published[id(plugin)] = document
    return document


class EnforcedSwaggerRenderPlugin(SwaggerRenderPlugin):
    """The docs page, showing the document :func:`openapi_document` serves (built on first use, not at start)."""

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        """Render the page around the served document."""
        return super().render(request, openapi_document(request.app))


class EnforcedJsonRenderPlugin(JsonRenderPlugin):
    """``/api/docs/openapi.json``: the document :func:`openapi_document` serves."""

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        """The served document as JSON."""
        return super().render(request, openapi_document(request.app))


class OpenAPIController(Controller):
    """The API description; no token needed."""

    path = "/api/v1/openapi.json"
    include_in_schema = False
    opt = {"exclude_from_auth": True}

    @get("/", operation_id="getOpenApiDocument", media_type=OpenAPIMediaType.OPENAPI_JSON, sync_to_thread=False)
    def document(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        """The OpenAPI document (the same one the docs page shows)."""
        return openapi_document(request.app)
