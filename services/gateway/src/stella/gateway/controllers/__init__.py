"""One Litestar controller per resource of the public API."""

from stella.gateway.controllers.asyncapi import AsyncAPIController
from stella.gateway.controllers.components import ComponentController
from stella.gateway.controllers.dead_letters import DeadLetterController
from stella.gateway.controllers.deployments import (
    AgentChannelController,
    AgentController,
    AgentTokenController,
    DeploymentJobController,
    EnvironmentTargetController,
    PromotionDeploymentController,
    TargetController,
)
from stella.gateway.controllers.environments import EnvironmentController
from stella.gateway.controllers.events import EventController
from stella.gateway.controllers.evidence import EvidenceController
from stella.gateway.controllers.health import HealthController
from stella.gateway.controllers.integrations import IntegrationController, IntegrationTypeController, SecretController
from stella.gateway.controllers.openapi import OpenAPIController
from stella.gateway.controllers.plugins import PluginController, PluginInstanceController
from stella.gateway.controllers.principals import PrincipalController
from stella.gateway.controllers.promotions import PromotionController
from stella.gateway.controllers.releases import ReleaseController
from stella.gateway.controllers.scans import ScanResultController
from stella.gateway.controllers.tenants import TenantController
from stella.gateway.controllers.tokens import TokenController
from stella.gateway.controllers.webhooks import WebhookController
from stella.gateway.controllers.workflows import WorkflowRunController, WorkflowTemplateController

__all__ = [
    "AgentChannelController",
    "AgentController",
    "AgentTokenController",
    "AsyncAPIController",
    "ComponentController",
    "DeadLetterController",
    "DeploymentJobController",
    "EnvironmentController",
    "EnvironmentTargetController",
    "EventController",
    "EvidenceController",
    "HealthController",
    "IntegrationController",
    "IntegrationTypeController",
    "OpenAPIController",
    "PluginController",
    "PluginInstanceController",
    "PrincipalController",
    "PromotionController",
    "PromotionDeploymentController",
    "ReleaseController",
    "ScanResultController",
    "SecretController",
    "TargetController",
    "TenantController",
    "TokenController",
    "WebhookController",
    "WorkflowRunController",
    "WorkflowTemplateController",
]
