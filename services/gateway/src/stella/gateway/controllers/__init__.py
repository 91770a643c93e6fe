"""One Litestar controller per resource of the public API."""

from stella.gateway.controllers.components import ComponentController
from stella.gateway.controllers.health import HealthController
from stella.gateway.controllers.openapi import OpenAPIController
from stella.gateway.controllers.principals import PrincipalController
from stella.gateway.controllers.releases import ReleaseController
from stella.gateway.controllers.tokens import TokenController

__all__ = [
    "ComponentController",
    "HealthController",
    "OpenAPIController",
    "PrincipalController",
    "ReleaseController",
    "TokenController",
]
