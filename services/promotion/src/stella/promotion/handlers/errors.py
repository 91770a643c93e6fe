"""Errors of the handler layer (the domain's own errors are reported as they are)."""

from __future__ import annotations

from stella.kit.errors import Conflict, ServiceError, Unavailable


class EnvironmentNameTaken(Conflict):
    """Another environment of the tenant has the name."""

    code = "RES_DUPLICATE_NAME"
    title = "Name already in use"


class EnvironmentInUse(Conflict):
    """Promotions reference the environment; it cannot be deleted."""

    code = "ENV_IN_USE"
    title = "Environment is used by promotions"


class FreezeWindowNotFound(ServiceError):
    """No such window on the environment."""

    code = "ENV_FREEZE_WINDOW_NOT_FOUND"
    status = 404
    title = "Freeze window not found"


class NotFrozen(Conflict):
    """A freeze override was given while no window closes the environment."""

    code = "GATE_NOT_FROZEN"
    title = "Nothing to override"


class UnknownWorkflowTemplate(ServiceError):
    """The environment's promotion policy names a workflow template the tenant does not have."""

    code = "ENV_WORKFLOW_TEMPLATE_UNKNOWN"
    status = 422
    title = "Unknown workflow template"


class UnsuitableWorkflowTemplate(ServiceError):
    """The environment's promotion policy names a template that cannot run its promotions."""

    code = "ENV_WORKFLOW_TEMPLATE_UNSUITABLE"
    status = 422
    title = "Workflow template cannot run promotions"


class WorkflowServiceUnavailable(Unavailable):
    """The workflow service did not answer whether an environment's template can run promotions."""

    code = "PROM_WORKFLOW_SERVICE_UNAVAILABLE"
    title = "Workflow service unavailable"


class ReleaseServiceUnavailable(Unavailable):
    """The release service did not answer a promotion request's release query."""

    code = "PROM_RELEASE_SERVICE_UNAVAILABLE"
    title = "Release service unavailable"
