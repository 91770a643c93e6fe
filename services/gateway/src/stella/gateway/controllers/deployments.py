"""Deployment routes (deployment service): targets, agent registration tokens, agents and their channel, jobs.

Targets: reading needs ``target:read``, creating ``target:create``, changing ``target:update`` (a drift check
too), deleting ``target:delete``. Agents and their registration tokens: ``agent:read``, ``agent:create``
(tokens), ``agent:update`` (revoke). Deployment jobs are a promotion's execution: reading them needs
``promotion:read``; cancelling, resuming, rolling back and remediating a target need ``promotion:deploy``.

The agent channel (``/api/v1/agents/register`` and ``/api/v1/agents/{id}/heartbeat|tasks|...``) takes no API
token: an agent authenticates with its registration token, then with its own credential (see
:mod:`stella.gateway.agents`).
"""

from __future__ import annotations

from typing import Annotated, Any, Final, TypeVar
from uuid import UUID

from litestar import Controller, Request, Response, delete, get, post, put
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter, QueryParameter
from pydantic import BaseModel

from stella.contracts import deployment as contract
from stella.contracts.agent import Heartbeat as HeartbeatContract
from stella.contracts.agent import LogChunk, RegisterAgent, TaskResult
from stella.contracts.envelope import Command, Query
from stella.gateway.agents import AgentCredential, agent_credential, registration_tenant
from stella.gateway.auth import require
from stella.gateway.dependencies import ID_SCHEMA, location, parse_id, problems
from stella.gateway.deployment_schemas import (
    Accepted,
    AgentOut,
    AgentPage,
    AgentRegisteredOut,
    AgentRegisterIn,
    AgentTokenCreate,
    AgentTokenOut,
    HeartbeatIn,
    HeartbeatOut,
    JobCancel,
    JobOut,
    JobPage,
    JobResume,
    JobRollback,
    LogChunkIn,
    ResultOutcomesOut,
    TargetCreate,
    TargetOut,
    TargetPage,
    TargetUpdate,
    TaskFeedOut,
    TaskOut,
    TaskResultIn,
    TaskResultsIn,
)
from stella.gateway.idempotency import REDACT_OPT
from stella.gateway.pagination import PageParams
from stella.gateway.permissions import Action, Resource
from stella.gateway.problems import ProblemError
from stella.gateway.relay import CallContext, Relay, parse_data
from stella.gateway.runtime import Runtime
from stella.gateway.tracing import trace_id

TARGETS: Final[str] = "/api/v1/targets"
AGENTS: Final[str] = "/api/v1/agents"
JOBS: Final[str] = "/api/v1/deployment-jobs"

_ENVIRONMENT_ID = Parameter(description="Environment id", schema_extra=ID_SCHEMA)
_TARGET_ID = Parameter(description="Target id", schema_extra=ID_SCHEMA)
_AGENT_ID = Parameter(description="Agent id", schema_extra=ID_SCHEMA)
_JOB_ID = Parameter(description="Deployment job id", schema_extra=ID_SCHEMA)
_PROMOTION_ID = Parameter(description="Promotion id", schema_extra=ID_SCHEMA)
_TASK_ID = Parameter(description="Task id", schema_extra=ID_SCHEMA)

_AGENT_AUTH: Final[dict[str, Any]] = {"exclude_from_auth": True}
"""The agent channel's routes: no API token; the agent's own credential is checked by the deployment service."""


M = TypeVar("M", bound=BaseModel)


async def _command(
    call: CallContext, relay: Relay, out: type[M], subject: str, model: type[Command], **fields: Any
) -> M:
    """Send the caller's command ``model(**fields)`` on ``subject`` and parse its answer as ``out``."""
    return parse_data(out, await relay.command(call, subject, call.command(model, **fields)))


async def _query(call: CallContext, relay: Relay, out: type[M], subject: str, model: type[Query], **fields: Any) -> M:
    """Ask the caller's query ``model(**fields)`` on ``subject`` and parse its answer as ``out``."""
    return parse_data(out, await relay.query(subject, call.query(model, **fields)))


def _target_fields(data: TargetCreate | TargetUpdate) -> dict[str, Any]:
    fields = data.model_dump(exclude_unset=True)
    if data.health_check is not None:
        fields["health_check"] = data.health_check.model_dump()
    return fields


class EnvironmentTargetController(Controller):
    """The targets of one environment."""

    path = "/api/v1/environments"
    tags = ["targets"]

    @post(
        "/{environment_id:str}/targets",
        operation_id="createTarget",
        summary="Add a deployment target to an environment",
        guards=[require(Resource.TARGET, Action.CREATE)],
        status_code=201,
        responses=problems(400, 403, 404, 409, 422),
        response_headers=[
            ResponseHeader(name="Location", description="URL of the new target", documentation_only=True)
        ],
    )
    async def create_target(
        self,
        data: JSONBody[TargetCreate],
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        runtime: NamedDependency[Runtime],
        environment_id: str = _ENVIRONMENT_ID,
    ) -> Response[TargetOut]:
        """Add a ``docker_host`` or ``compose_host`` target; the environment must be the caller tenant's (else 404)."""
        target = await _command(
            call,
            relay,
            TargetOut,
            contract.CREATE_TARGET,
            contract.CreateTarget,
            environment_id=parse_id(environment_id, "environment_id"),
            **_target_fields(data),
        )
        return Response(target, status_code=201, headers={"Location": location(runtime, f"{TARGETS}/{target.id}")})

    @get(
        "/{environment_id:str}/targets",
        operation_id="listEnvironmentTargets",
        summary="List an environment's targets",
        guards=[require(Resource.TARGET, Action.READ)],
        responses=problems(400, 403),
    )
    async def list_environment_targets(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        page: NamedDependency[PageParams],
        environment_id: str = _ENVIRONMENT_ID,
    ) -> TargetPage:
        """The environment's targets by name."""
        return await _query(
            call,
            relay,
            TargetPage,
            contract.LIST_TARGETS,
            contract.ListTargets,
            environment_id=parse_id(environment_id, "environment_id"),
            page=page.to_contract(),
        )


class TargetController(Controller):
    """Deployment targets of the caller's tenant."""

    path = TARGETS
    tags = ["targets"]

    @get(
        "/",
        operation_id="listTargets",
        summary="List targets",
        guards=[require(Resource.TARGET, Action.READ)],
        responses=problems(400, 403),
    )
    async def list_targets(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], page: NamedDependency[PageParams]
    ) -> TargetPage:
        """Every target of the tenant, by name."""
        return await _query(
            call, relay, TargetPage, contract.LIST_TARGETS, contract.ListTargets, page=page.to_contract()
        )

    @get(
        "/{target_id:str}",
        operation_id="getTarget",
        summary="Read a target",
        guards=[require(Resource.TARGET, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def get_target(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], target_id: str = _TARGET_ID
    ) -> TargetOut:
        """One target: its health, the digest each component runs, its sticker and drift."""
        return await _query(
            call, relay, TargetOut, contract.GET_TARGET, contract.GetTarget, target_id=parse_id(target_id, "target_id")
        )

    @put(
        "/{target_id:str}",
        operation_id="updateTarget",
        summary="Change a target",
        guards=[require(Resource.TARGET, Action.UPDATE)],
        responses=problems(400, 403, 404, 409, 422),
    )
    async def update_target(
        self,
        data: JSONBody[TargetUpdate],
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        target_id: str = _TARGET_ID,
    ) -> TargetOut:
        """Change a target's name, connection, labels, health check or agent; omitted fields keep their value."""
        return await _command(
            call,
            relay,
            TargetOut,
            contract.UPDATE_TARGET,
            contract.UpdateTarget,
            target_id=parse_id(target_id, "target_id"),
            **_target_fields(data),
        )

    @delete(
        "/{target_id:str}",
        operation_id="deleteTarget",
        summary="Delete a target",
        guards=[require(Resource.TARGET, Action.DELETE)],
        responses=problems(400, 403, 404, 409),
    )
    async def delete_target(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], target_id: str = _TARGET_ID
    ) -> None:
        """Delete a target; refused (409) while a job has unfinished tasks on it."""
        await relay.command(
            call,
            contract.DELETE_TARGET,
            call.command(contract.DeleteTarget, target_id=parse_id(target_id, "target_id")),
        )

    @post(
        "/{target_id:str}/check-drift",
        operation_id="checkTargetDrift",
        summary="Inspect a target for drift now",
        guards=[require(Resource.TARGET, Action.UPDATE)],
        status_code=202,
        responses=problems(400, 403, 404),
    )
    async def check_drift(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], target_id: str = _TARGET_ID
    ) -> TaskOut:
        """Queue an inspection of the target against its sticker; the task (and the target) show the verdict."""
        return await _command(
            call, relay, TaskOut, contract.CHECK_DRIFT, contract.CheckDrift, target_id=parse_id(target_id, "target_id")
        )

    @post(
        "/{target_id:str}/remediate",
        operation_id="remediateTarget",
        summary="Redeploy a target's sticker release",
        guards=[require(Resource.PROMOTION, Action.DEPLOY)],
        status_code=202,
        responses=problems(400, 403, 404, 409, 422),
    )
    async def remediate(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], target_id: str = _TARGET_ID
    ) -> JobOut:
        """Start a job redeploying the release the target's sticker names (422 when it has none)."""
        return await _command(
            call,
            relay,
            JobOut,
            contract.REMEDIATE_TARGET,
            contract.RemediateTarget,
            target_id=parse_id(target_id, "target_id"),
        )


class AgentTokenController(Controller):
    """One-time agent registration tokens."""

    path = "/api/v1/agent-tokens"
    tags = ["agents"]

    @post(
        "/",
        operation_id="createAgentToken",
        summary="Create a one-time agent registration token",
        guards=[require(Resource.AGENT, Action.CREATE)],
        status_code=201,
        responses=problems(400, 403),
        opt={REDACT_OPT: ("token",)},
    )
    async def create_agent_token(
        self, data: JSONBody[AgentTokenCreate], call: NamedDependency[CallContext], relay: NamedDependency[Relay]
    ) -> Response[AgentTokenOut]:
        """A token one agent registers with, once, before it expires. It is in this response only."""
        token = await _command(
            call, relay, AgentTokenOut, contract.CREATE_AGENT_TOKEN, contract.CreateAgentToken, **data.model_dump()
        )
        return Response(token, status_code=201)


class AgentController(Controller):
    """Registered agents: listing and revoking them."""

    path = AGENTS
    tags = ["agents"]

    @get(
        "/",
        operation_id="listAgents",
        summary="List agents",
        guards=[require(Resource.AGENT, Action.READ)],
        responses=problems(400, 403),
    )
    async def list_agents(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        page: NamedDependency[PageParams],
        status: Annotated[
            str | None,
            QueryParameter(description="Only agents in this status.", pattern="^(online|degraded|offline|revoked)$"),
        ] = None,
    ) -> AgentPage:
        """The tenant's agents by name, with their status and last heartbeat."""
        return await _query(
            call, relay, AgentPage, contract.LIST_AGENTS, contract.ListAgents, status=status, page=page.to_contract()
        )

    @get(
        "/{agent_id:str}",
        operation_id="getAgent",
        summary="Read an agent",
        guards=[require(Resource.AGENT, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def get_agent(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], agent_id: str = _AGENT_ID
    ) -> AgentOut:
        """One agent."""
        return await _query(
            call, relay, AgentOut, contract.GET_AGENT, contract.GetAgent, agent_id=parse_id(agent_id, "agent_id")
        )

    @post(
        "/{agent_id:str}/revoke",
        operation_id="revokeAgent",
        summary="Revoke an agent",
        guards=[require(Resource.AGENT, Action.UPDATE)],
        status_code=200,
        responses=problems(400, 403, 404),
    )
    async def revoke_agent(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], agent_id: str = _AGENT_ID
    ) -> AgentOut:
        """Refuse the agent's credential from now on; the tasks it holds go to another agent or time out."""
        return await _command(
            call, relay, AgentOut, contract.REVOKE_AGENT, contract.RevokeAgent, agent_id=parse_id(agent_id, "agent_id")
        )


def _agent_call(
    request: Request[Any, Any, Any], agent_id: str, model: type[contract.AgentCall], **fields: Any
) -> tuple[AgentCredential, contract.AgentCall]:
    credential = agent_credential(request, parse_id(agent_id, "agent_id"))
    call = model(
        tenant_id=credential.tenant_id,
        correlation_id=trace_id(request.scope),
        agent_id=credential.agent_id,
        credential=credential.secret,
        **fields,
    )
    return credential, call


class AgentChannelController(Controller):
    """What agents call: registration, heartbeats, the task feed, log chunks and results."""

    path = AGENTS
    tags = ["agents"]
    opt = _AGENT_AUTH
    security = [{"agentCredential": []}]

    @post(
        "/register",
        operation_id="registerAgent",
        summary="Register an agent with a one-time token",
        status_code=201,
        responses=problems(400, 401, 409, 422),
        security=[],
    )
    async def register(
        self, data: JSONBody[AgentRegisterIn], request: Request[Any, Any, Any], relay: NamedDependency[Relay]
    ) -> Response[AgentRegisteredOut]:
        """Trade a registration token for the agent's id and credential (shown once; Stella keeps its hash).

        401 for a token Stella did not make, 409 for a used one, 422 for an expired one.
        """
        tenant_id = registration_tenant(data.registration_token)
        query = contract.AgentRegister(
            tenant_id=tenant_id,
            correlation_id=trace_id(request.scope),
            registration=RegisterAgent.model_validate(data.model_dump()),
        )
        registered = parse_data(AgentRegisteredOut, await relay.query(contract.AGENT_REGISTER, query))
        return Response(registered, status_code=201)

    @post(
        "/{agent_id:str}/heartbeat",
        operation_id="agentHeartbeat",
        summary="Heartbeat of an agent",
        status_code=200,
        responses=problems(400, 401),
    )
    async def heartbeat(
        self,
        data: JSONBody[HeartbeatIn],
        request: Request[Any, Any, Any],
        relay: NamedDependency[Relay],
        agent_id: str = _AGENT_ID,
    ) -> HeartbeatOut:
        """Record that the agent lives, its self-checks (a failing one makes it ``degraded``) and the tasks it runs."""
        _, call = _agent_call(
            request, agent_id, contract.AgentHeartbeat, heartbeat=HeartbeatContract.model_validate(data.model_dump())
        )
        return parse_data(HeartbeatOut, await relay.query(contract.AGENT_HEARTBEAT, call))

    @get(
        "/{agent_id:str}/tasks",
        operation_id="agentTaskFeed",
        summary="Lease the agent's next tasks (long poll)",
        responses=problems(400, 401),
    )
    async def tasks(
        self,
        request: Request[Any, Any, Any],
        relay: NamedDependency[Relay],
        runtime: NamedDependency[Runtime],
        agent_id: str = _AGENT_ID,
        wait: Annotated[
            float, QueryParameter(ge=0, le=300, description="Seconds to wait for a task when none is ready.")
        ] = 0,
        max_tasks: Annotated[int, QueryParameter(ge=1, le=100, description="Most tasks to lease at once.")] = 10,
        held: Annotated[
            str | None,
            QueryParameter(
                description=(
                    "Comma-separated ids of every task the agent has now (at most 100; empty: none). Tasks leased "
                    "to it and not listed were lost on their way and are handed over again at once."
                ),
                max_length=contract.MAX_HELD_TASKS * 37,
            ),
        ] = None,
    ) -> TaskFeedOut:
        """Tasks of the targets assigned to this agent, leased to it; waits up to ``wait`` seconds for one."""
        credential, call = _agent_call(request, agent_id, contract.AgentPoll, max_tasks=max_tasks, held=_held_ids(held))
        notices = runtime.get_task_notices()
        deadline = runtime.clock().timestamp() + min(wait, runtime.settings.agent_poll_max_s)
        while True:
            feed = parse_data(TaskFeedOut, await relay.query(contract.AGENT_POLL, call))
            remaining = deadline - runtime.clock().timestamp()
            if feed.tasks or remaining <= 0:
                return feed
            await notices.wait(credential.tenant_id, remaining)

    @post(
        "/{agent_id:str}/tasks/{task_id:str}/logs",
        operation_id="agentTaskLogs",
        summary="Add a chunk of a task's log",
        status_code=200,
        responses=problems(400, 401, 404),
    )
    async def logs(
        self,
        data: JSONBody[LogChunkIn],
        request: Request[Any, Any, Any],
        relay: NamedDependency[Relay],
        agent_id: str = _AGENT_ID,
        task_id: str = _TASK_ID,
    ) -> Accepted:
        """Keep a log chunk (once per ``seq``; bounded per task) of a task the agent holds."""
        _check_task(task_id, data.task_id)
        _, call = _agent_call(request, agent_id, contract.AgentLog, chunk=LogChunk.model_validate(data.model_dump()))
        stored = await relay.query(contract.AGENT_LOG, call)
        return Accepted(accepted=bool(stored.get("stored")))

    @post(
        "/{agent_id:str}/tasks/{task_id:str}/result",
        operation_id="agentTaskResult",
        summary="Report a task's result",
        status_code=200,
        responses=problems(400, 401, 404, 409, 422),
    )
    async def result(
        self,
        data: JSONBody[TaskResultIn],
        request: Request[Any, Any, Any],
        relay: NamedDependency[Relay],
        agent_id: str = _AGENT_ID,
        task_id: str = _TASK_ID,
    ) -> Accepted:
        """The task's one result; posted again it changes nothing, and a result of an older attempt is ignored."""
        _check_task(task_id, data.task_id)
        _, call = _agent_call(
            request, agent_id, contract.AgentResult, result=TaskResult.model_validate(data.model_dump())
        )
        answer = await relay.query(contract.AGENT_RESULT, call)
        return Accepted(accepted=bool(answer.get("accepted")))

    @post(
        "/{agent_id:str}/results",
        operation_id="agentTaskResults",
        summary="Report the results of several tasks at once",
        status_code=200,
        responses=problems(400, 401),
    )
    async def results(
        self,
        data: JSONBody[TaskResultsIn],
        request: Request[Any, Any, Any],
        relay: NamedDependency[Relay],
        agent_id: str = _AGENT_ID,
    ) -> ResultOutcomesOut:
        """Up to 100 results in one call, applied together; each result's outcome is what its own post would answer.

        The last log chunks of these tasks may come along (``logs``): they are kept first, in the same transaction.

        A result refused on its own (unknown task: 404, idempotency key not the task's: 422) says so in its
        outcome and changes nothing; the others are taken.
        """
        if sum(len(line) for chunk in data.logs for line in chunk.lines) > contract.MAX_LOG_CHARS_PER_POST:
            raise ProblemError(
                400,
                "VAL_INVALID_REQUEST",
                f"The log chunks carry more than {contract.MAX_LOG_CHARS_PER_POST} characters; post the rest to "
                "each task's logs.",
                errors=[{"loc": ["body", "logs"], "msg": "too many characters"}],
            )
        _, call = _agent_call(
            request,
            agent_id,
            contract.AgentResults,
            results=[TaskResult.model_validate(item.model_dump()) for item in data.results],
            logs=[LogChunk.model_validate(item.model_dump()) for item in data.logs],
        )
        return parse_data(ResultOutcomesOut, await relay.query(contract.AGENT_RESULTS, call))


def _held_ids(held: str | None) -> list[UUID] | None:
    if held is None:
        return None
    return [parse_id(item, "held") for item in held.split(",") if item]


def _check_task(path_id: str, body_id: UUID) -> None:
    if parse_id(path_id, "task_id") != body_id:
        raise ProblemError(
            400,
            "VAL_INVALID_REQUEST",
            "The body's task_id is not the task of the path.",
            errors=[{"loc": ["body", "task_id"], "msg": "must equal the path's task id"}],
        )


class DeploymentJobController(Controller):
    """Deployment jobs: what was deployed where, task by task, with logs and artifacts."""

    path = JOBS
    tags = ["deployments"]

    @get(
        "/",
        operation_id="listDeploymentJobs",
        summary="List deployment jobs",
        guards=[require(Resource.PROMOTION, Action.READ)],
        responses=problems(400, 403),
    )
    async def list_jobs(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        page: NamedDependency[PageParams],
        environment_id: Annotated[str | None, QueryParameter(description="Only jobs of this environment.")] = None,
        promotion_id: Annotated[str | None, QueryParameter(description="Only jobs of this promotion.")] = None,
        status: Annotated[
            str | None,
            QueryParameter(
                description="Only jobs in this status.",
                pattern="^(pending|running|paused|rolling_back|succeeded|failed|rolled_back|cancelled)$",
            ),
        ] = None,
    ) -> JobPage:
        """Jobs of the tenant, newest first."""
        return await _query(
            call,
            relay,
            JobPage,
            contract.LIST_JOBS,
            contract.ListJobs,
            environment_id=parse_id(environment_id, "environment_id") if environment_id else None,
            promotion_id=parse_id(promotion_id, "promotion_id") if promotion_id else None,
            status=status,
            page=page.to_contract(),
        )

    @get(
        "/{job_id:str}",
        operation_id="getDeploymentJob",
        summary="Read a deployment job",
        guards=[require(Resource.PROMOTION, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def get_job(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        page: NamedDependency[PageParams],
        job_id: str = _JOB_ID,
    ) -> JobOut:
        """A job with a page of its tasks (``page_size`` of them, at most 200), their logs and artifacts."""
        return await _query(
            call,
            relay,
            JobOut,
            contract.GET_JOB,
            contract.GetJob,
            job_id=parse_id(job_id, "job_id"),
            tasks_page=page.to_contract(),
        )

    @post(
        "/{job_id:str}/cancel",
        operation_id="cancelDeploymentJob",
        summary="Cancel a deployment job",
        guards=[require(Resource.PROMOTION, Action.DEPLOY)],
        status_code=200,
        responses=problems(400, 403, 404, 409),
    )
    async def cancel_job(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        data: JSONBody[JobCancel | None] = None,
        job_id: str = _JOB_ID,
    ) -> JobOut:
        """Cancel a job that has not ended; agents stop its running tasks at their next heartbeat."""
        return await _command(
            call,
            relay,
            JobOut,
            contract.CANCEL_JOB,
            contract.CancelJob,
            job_id=parse_id(job_id, "job_id"),
            reason=data.reason if data else None,
        )

    @post(
        "/{job_id:str}/resume",
        operation_id="resumeDeploymentJob",
        summary="Resume a paused deployment job",
        guards=[require(Resource.PROMOTION, Action.DEPLOY)],
        status_code=200,
        responses=problems(400, 403, 404, 409),
    )
    async def resume_job(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        data: JSONBody[JobResume | None] = None,
        job_id: str = _JOB_ID,
    ) -> JobOut:
        """Resume a job its ``pause`` failure behaviour stopped: the failed tasks of the batch that paused it run
        again (a new attempt each), then the job goes on; it pauses again if one fails again.

        409 ``DEPLOY_JOB_NOT_PAUSED`` for a job that is not paused.
        """
        return await _command(
            call,
            relay,
            JobOut,
            contract.RESUME_JOB,
            contract.ResumeJob,
            job_id=parse_id(job_id, "job_id"),
            reason=data.reason if data else None,
        )

    @post(
        "/{job_id:str}/rollback",
        operation_id="rollbackDeploymentJob",
        summary="Roll a job's targets back to their previous digests",
        guards=[require(Resource.PROMOTION, Action.DEPLOY)],
        status_code=201,
        responses=problems(400, 403, 404, 409, 422),
        response_headers=[
            ResponseHeader(name="Location", description="URL of the rollback job", documentation_only=True)
        ],
    )
    async def rollback_job(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        runtime: NamedDependency[Runtime],
        data: JSONBody[JobRollback | None] = None,
        job_id: str = _JOB_ID,
    ) -> Response[JobOut]:
        """A new job (``rollback_of`` this one) deploying each chosen target's previous digests.

        422 ``DEPLOY_NO_PREVIOUS_DIGEST`` when no target has one (a first deployment).
        """
        job = await _command(
            call,
            relay,
            JobOut,
            contract.ROLLBACK_JOB,
            contract.RollbackJob,
            job_id=parse_id(job_id, "job_id"),
            target_ids=data.target_ids if data else None,
            reason=data.reason if data else None,
        )
        return Response(job, status_code=201, headers={"Location": location(runtime, f"{JOBS}/{job.id}")})


class PromotionDeploymentController(Controller):
    """The deployment of a promotion."""

    path = "/api/v1/promotions"
    tags = ["deployments"]

    @get(
        "/{promotion_id:str}/deployment",
        operation_id="getPromotionDeployment",
        summary="Read a promotion's deployment job",
        guards=[require(Resource.PROMOTION, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def get_promotion_deployment(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        page: NamedDependency[PageParams],
        promotion_id: str = _PROMOTION_ID,
    ) -> JobOut:
        """The promotion's latest deployment job with a page of its tasks (404 before it started deploying)."""
        return await _query(
            call,
            relay,
            JobOut,
            contract.GET_PROMOTION_DEPLOYMENT,
            contract.GetPromotionDeployment,
            promotion_id=parse_id(promotion_id, "promotion_id"),
            tasks_page=page.to_contract(),
        )
