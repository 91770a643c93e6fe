"""``/api/v1/workflow-templates`` and ``/api/v1/workflow-runs``: the workflow engine's templates and runs.

Reading needs ``workflow:read``; saving a template (a new version of it) ``workflow:create``.
"""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, get, post
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter, QueryParameter

from stella.contracts import workflow as contract
from stella.contracts.validation import NAME_PATTERN
from stella.gateway.auth import require
from stella.gateway.dependencies import ID_SCHEMA, location, parse_id, problems
from stella.gateway.pagination import PageParams
from stella.gateway.permissions import Action, Resource
from stella.gateway.relay import CallContext, Relay, parse_data
from stella.gateway.runtime import Runtime
from stella.gateway.schemas import TemplateCreate, TemplateOut, TemplatePage
from stella.gateway.validation import INT32_MAX

TEMPLATES = "/api/v1/workflow-templates"
RUNS = "/api/v1/workflow-runs"


class WorkflowTemplateController(Controller):
    """Workflow templates visible to the caller's tenant: the built-in ones and the tenant's own."""

    path = TEMPLATES
    tags = ["workflows"]

    @get(
        "/",
        operation_id="listWorkflowTemplates",
        summary="List workflow templates",
        guards=[require(Resource.WORKFLOW, Action.READ)],
        responses=problems(400, 403),
    )
    async def list_templates(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], page: NamedDependency[PageParams]
    ) -> TemplatePage:
        """The latest version of every template: built-in ones and the tenant's."""
        query = call.query(contract.ListTemplates, page=page.to_contract())
        return parse_data(TemplatePage, await relay.query(contract.LIST_TEMPLATES, query))

    @post(
        "/",
        operation_id="saveWorkflowTemplate",
        summary="Save a workflow template",
        guards=[require(Resource.WORKFLOW, Action.CREATE)],
        status_code=201,
        responses=problems(400, 403, 409, 422),
        response_headers=[
            ResponseHeader(name="Location", description="URL of the saved version", documentation_only=True)
        ],
    )
    async def save_template(
        self,
        data: JSONBody[TemplateCreate],
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        runtime: NamedDependency[Runtime],
    ) -> Response[TemplateOut]:
        """Save the next version of a tenant template; runs already started keep the version they pinned.

        The workflow service validates the DAG: an unknown step type, a cycle or an edge to a missing step is a
        400 with a ``WF_...`` code.
        """
        command = call.command(contract.SaveTemplate, **data.model_dump(mode="json", by_alias=True))
        template = parse_data(TemplateOut, await relay.command(call, contract.SAVE_TEMPLATE, command))
        return Response(
            template,
            status_code=201,
            headers={"Location": location(runtime, f"{TEMPLATES}/{template.name}?version={template.version}")},
        )

    @get(
        "/{name:str}",
        operation_id="getWorkflowTemplate",
        summary="Read a workflow template",
        guards=[require(Resource.WORKFLOW, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def get_template(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        name: str = Parameter(description="Template name", pattern=NAME_PATTERN),
        version: Annotated[
            int | None,
            QueryParameter(ge=1, le=INT32_MAX, description="This version; the latest when omitted."),
        ] = None,
    ) -> TemplateOut:
        """Read a template: its latest version, or the one named by ``version``."""
        query = call.query(contract.GetTemplate, name=name, version=version)
        return parse_data(TemplateOut, await relay.query(contract.GET_TEMPLATE, query))


class WorkflowRunController(Controller):
    """Workflow runs of the caller's tenant (a promotion's run id is its ``workflow_run_id``)."""

    path = RUNS
    tags = ["workflows"]

    @get(
        "/{run_id:str}",
        operation_id="getWorkflowRun",
        summary="Read a workflow run",
        guards=[require(Resource.WORKFLOW, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def get_run(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        run_id: str = Parameter(description="Workflow run id", schema_extra=ID_SCHEMA),
    ) -> contract.RunView:
        """Read a run with every attempt of every step."""
        query = call.query(contract.GetRun, run_id=parse_id(run_id, "run_id"))
        return parse_data(contract.RunView, await relay.query(contract.GET_RUN, query))
