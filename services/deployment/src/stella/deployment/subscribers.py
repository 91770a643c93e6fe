"""Deployment service routes: message -> handler call. No logic here."""

from __future__ import annotations

from faststream.nats import NatsRouter

from stella.contracts import deployment as c
from stella.contracts.workflow import ExecuteStep
from stella.deployment.handlers import Handlers
from stella.kit.broker import CommandRoutes, QueryRoutes
from stella.kit.service import ServiceRuntime

QUERY_WORKERS = 8
"""Queries (mostly the agent channel: polls, log chunks, results) answered at once: each waits on Postgres,
and one after the other they queue behind each other when many agents report together."""


def register(runtime: ServiceRuntime, router: NatsRouter, handlers: Handlers) -> None:
    """Attach the deployment commands (the workflow's deploy, health-check and verify-drift steps among them),
    the agent channel and the queries to ``router``."""
    commands = CommandRoutes(c.CONTEXT, runtime.name)
    commands.on(c.EXECUTE_STEP, ExecuteStep, handlers.execute_step)
    commands.on(c.CREATE_TARGET, c.CreateTarget, handlers.create_target)
    commands.on(c.UPDATE_TARGET, c.UpdateTarget, handlers.update_target)
    commands.on(c.DELETE_TARGET, c.DeleteTarget, handlers.delete_target)
    commands.on(c.CREATE_AGENT_TOKEN, c.CreateAgentToken, handlers.create_agent_token)
    commands.on(c.REVOKE_AGENT, c.RevokeAgent, handlers.revoke_agent)
    commands.on(c.CANCEL_JOB, c.CancelJob, handlers.cancel_job)
    commands.on(c.RESUME_JOB, c.ResumeJob, handlers.resume_job)
    commands.on(c.ROLLBACK_JOB, c.RollbackJob, handlers.rollback_job)
    commands.on(c.CHECK_DRIFT, c.CheckDrift, handlers.check_drift)
    commands.on(c.REMEDIATE_TARGET, c.RemediateTarget, handlers.remediate_target)
    commands.attach(router, runtime)

    queries = QueryRoutes(c.CONTEXT, runtime.name, workers=QUERY_WORKERS)
    queries.on(c.AGENT_REGISTER, c.AgentRegister, handlers.register_agent)
    queries.on(c.AGENT_AUTHENTICATE, c.AgentAuthenticate, handlers.authenticate_agent)
    queries.on(c.AGENT_HEARTBEAT, c.AgentHeartbeat, handlers.heartbeat)
    queries.on(c.AGENT_POLL, c.AgentPoll, handlers.poll)
    queries.on(c.AGENT_LOG, c.AgentLog, handlers.store_log)
    queries.on(c.AGENT_RESULT, c.AgentResult, handlers.record_result)
    queries.on(c.AGENT_RESULTS, c.AgentResults, handlers.record_results)
    queries.on(c.GET_TARGET, c.GetTarget, handlers.get_target)
    queries.on(c.LIST_TARGETS, c.ListTargets, handlers.list_targets)
    queries.on(c.GET_AGENT, c.GetAgent, handlers.get_agent)
    queries.on(c.LIST_AGENTS, c.ListAgents, handlers.list_agents)
    queries.on(c.GET_JOB, c.GetJob, handlers.get_job)
    queries.on(c.LIST_JOBS, c.ListJobs, handlers.list_jobs)
    queries.on(c.GET_PROMOTION_DEPLOYMENT, c.GetPromotionDeployment, handlers.get_promotion_deployment)
    queries.attach(router, runtime)
