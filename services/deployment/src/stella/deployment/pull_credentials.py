"""Registry pull credentials put into the tasks an agent leases, and nowhere else.

A component names the ``registry`` integration its image is read through (``registry_integration_id`` in its
:class:`~stella.contracts.agent.ComponentSpec`). When tasks are leased to an agent, the deployment service asks
the integration service once for the connections of every integration the leased tasks name
(:data:`~stella.contracts.integration.GET_REGISTRY_CONNECTIONS`, scoped to the tenant) and puts each task's
credentials in the body handed to the agent (``AgentTask.credentials``). They are never written to the tasks
table, an event, a log line or an error: the stored body names the integration, not its secret.

A credential goes only with a component whose image lives on the integration's own registry host, so a
component naming an integration of another registry never sends that integration's secret there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID, uuid4

from pydantic import ValidationError

from stella.contracts.agent import RegistryCredential, TaskType, registry_host, serves_host
from stella.contracts.envelope import ErrorDetail
from stella.contracts.integration import (
    GET_REGISTRY_CONNECTIONS,
    GetRegistryConnections,
    RegistryConnection,
    RegistryConnections,
)
from stella.kit.asking import Refused, ask
from stella.kit.broker import ServiceClient
from stella.kit.errors import Unavailable

log = logging.getLogger(__name__)

PULLING_TASKS = frozenset({TaskType.DEPLOY.value, TaskType.ROLLBACK.value})
"""Task types whose agent pulls images."""


def credentials_for(
    components: Iterable[Mapping[str, Any]], connections: Mapping[UUID, RegistryConnection]
) -> list[RegistryCredential]:
    """The pull credentials of a task's components: per registry host, the one of the integration a component
    on that host names, only when the integration is for that same host.

    Args:
        components: The task's ``ComponentSpec`` bodies.
        connections: The registry connections found, by integration id.
    """
    found: dict[str, RegistryCredential] = {}
    for component in components:
        raw = component.get("registry_integration_id")
        if not raw:
            continue
        connection = connections.get(UUID(str(raw)))
        if connection is None or connection.username is None or connection.password is None:
            continue
        host = registry_host(str(component.get("image_repository", "")))
        if not serves_host(urlsplit(connection.url).netloc, host):
            log.warning(
                "registry integration %s is not for registry %s of component %s: no credential sent",
                connection.integration_id,
                host,
                component.get("name"),
            )
            continue
        if host in found:
            continue
        try:
            found[host] = RegistryCredential(
                registry=host, username=connection.username, password=connection.password.get_secret_value()
            )
        except ValidationError:
            log.warning("registry host %s cannot carry a pull credential", host)
    return list(found.values())


def _wanted(tasks: Sequence[Mapping[str, Any]]) -> list[UUID]:
    ids: dict[UUID, None] = {}
    for task in tasks:
        if task.get("type") not in PULLING_TASKS:
            continue
        for component in task.get("components") or []:
            raw = component.get("registry_integration_id")
            if raw:
                ids[UUID(str(raw))] = None
    return list(ids)


async def attach_pull_credentials(
    client: ServiceClient, tenant_id: UUID, tasks: Sequence[dict[str, Any]], *, timeout: float
) -> None:
    """Put into each leased task body (in place) the pull credentials of its components' registry integrations,
    asked of the integration service in one request for the whole lease.

    When the integration service does not answer, the tasks go without credentials (a private registry then
    refuses the pull and the task fails saying so); nothing is retried here.
    """
    wanted = _wanted(tasks)
    if not wanted:
        return
    query = GetRegistryConnections(tenant_id=tenant_id, correlation_id=uuid4(), integration_ids=wanted)

    def unavailable(error: ErrorDetail) -> Exception:
        return Unavailable(f"the integration service did not answer: {error.detail}")

    try:
        answer = await ask(
            client, GET_REGISTRY_CONNECTIONS, query, RegistryConnections, timeout=timeout, unavailable=unavailable
        )
    except (Refused, Unavailable) as exc:
        log.warning("no registry credentials for %d leased task(s): %s", len(tasks), type(exc).__name__)
        return
    if answer.missing:
        log.warning("registry integration(s) %s cannot be used for pulls", ", ".join(map(str, answer.missing)))
    connections = {connection.integration_id: connection for connection in answer.connections}
    for task in tasks:
        if task.get("type") not in PULLING_TASKS:
            continue
        credentials = credentials_for(task.get("components") or [], connections)
        if credentials:
            task["credentials"] = [credential.model_dump(mode="json") for credential in credentials]


__all__ = ["attach_pull_credentials", "credentials_for", "registry_host"]
