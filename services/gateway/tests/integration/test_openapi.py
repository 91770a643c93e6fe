"""The API description publishes what the gateway enforces, and OPTIONS tells every method of a path."""

from __future__ import annotations

import functools
import re
from typing import Any

from stella.contracts.validation import NAME_PATTERN, SEMVER_PATTERN

from .conftest import Gateway

METHODS = {"get", "post", "put", "delete", "patch"}


async def _document(gateway: Gateway) -> dict[str, Any]:
    response = await gateway.call("GET", "/api/v1/openapi.json", None)
    assert response.status_code == 200
    return response.json()


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """The non-null branch of ``anyOf: [X, null]``."""
    return next(s for s in schema.get("anyOf", [schema]) if s.get("type") != "null")


async def test_the_document_publishes_the_patterns_the_gateway_enforces(gateway: Gateway) -> None:
    schemas = (await _document(gateway))["components"]["schemas"]
    version = schemas["VersionCreate"]["properties"]
    assert _nullable(version["semver"])["pattern"] == SEMVER_PATTERN
    assert schemas["PrincipalCreate"]["properties"]["groups"]["items"]["pattern"] == NAME_PATTERN
    assert _nullable(schemas["PrincipalUpdate"]["properties"]["groups"])["items"]["pattern"] == NAME_PATTERN
    node = schemas["NodeIn"]["properties"]["id"]
    assert node["pattern"] == r"^[a-z][a-z0-9_-]{0,62}$"
    assert _nullable(schemas["ComponentCreate"]["properties"]["default_channel"])["pattern"]
    assert _nullable(schemas["ComponentCreate"]["properties"]["registry_credential_ref"])["pattern"]
    # Unknown fields are refused, so the document says so for every request body.
    for name in ("ComponentCreate", "EnvironmentCreate", "PromotionCreate", "TemplateCreate", "VoteBody"):
        assert schemas[name]["additionalProperties"] is False, name
    # Strict integers: the bounds of their columns.
    assert schemas["EnvironmentCreate"]["properties"]["order_index"]["maximum"] == 10_000


def _parameter_example(item: dict[str, Any], match: re.Match[str]) -> str:
    return _example(item, match.group(1))


def _example(item: dict[str, Any], name: str) -> str:
    """A value the path parameter ``name`` accepts: ``1`` for an integer, else a UUID."""
    for operation in item.values():
        for parameter in operation.get("parameters", []) if isinstance(operation, dict) else []:
            is_this = parameter.get("in") == "path" and parameter.get("name") == name
            if is_this and parameter.get("schema", {}).get("type") == "integer":
                return "1"
    return "00000000-0000-0000-0000-000000000001"


async def test_options_allows_every_method_of_the_path(gateway: Gateway) -> None:
    document = await _document(gateway)
    tenant = await gateway.tenant()
    for template, item in document["paths"].items():
        path = re.sub(r"\{([^}]+)\}", functools.partial(_parameter_example, item), template)
        response = await gateway.call("OPTIONS", path, tenant.token)
        assert response.status_code == 204, (path, response.text)
        allowed = {m.strip().lower() for m in response.headers["allow"].split(",")}
        assert allowed == ({m for m in item if m in METHODS} | {"options"}), (template, allowed)
    refused = await gateway.call("PATCH", "/api/v1/components", tenant.token)
    assert refused.status_code == 405
    assert {m.strip() for m in refused.headers["allow"].split(",")} == {"GET", "POST", "OPTIONS"}
