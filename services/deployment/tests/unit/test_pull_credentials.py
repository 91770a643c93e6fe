"""Which registry credentials go into a leased task: only an integration's own host's, asked once per lease."""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID, uuid4

from pydantic import SecretStr

from stella.contracts.envelope import ErrorDetail, Query, Reply
from stella.contracts.integration import GET_REGISTRY_CONNECTIONS, GetRegistryConnections, RegistryConnection
from stella.deployment.pull_credentials import attach_pull_credentials, credentials_for, registry_host
from stella.kit.broker import ServiceClient

HOST_A = "registry-a.example:5000"
HOST_B = "registry-b.example:5000"
PASSWORD_A = "pw-a-0123456789"


def _connection(iid: UUID, url: str, password: str = PASSWORD_A) -> RegistryConnection:
    return RegistryConnection(integration_id=iid, url=url, username="ci", password=SecretStr(password))


def _component(repository: str, iid: UUID | None, name: str = "web") -> dict[str, Any]:
    return {"name": name, "image_repository": repository, "registry_integration_id": str(iid) if iid else None}


def test_a_credential_for_host_a_is_never_attached_to_a_component_on_host_b() -> None:
    a = uuid4()
    connections = {a: _connection(a, f"https://{HOST_A}")}

    on_b = credentials_for([_component(f"{HOST_B}/team/app", a)], connections)
    assert on_b == []
    # Nor to a host that merely starts like A's, nor to Docker Hub, nor to A's host on another port.
    assert credentials_for([_component("registry-a.example:5000.evil.example/app", a)], connections) == []
    assert credentials_for([_component("team/app", a)], connections) == []
    assert credentials_for([_component("registry-a.example:5001/app", a)], connections) == []

    on_a = credentials_for([_component(f"{HOST_A}/team/app", a)], connections)
    assert [(c.registry, c.username, c.password) for c in on_a] == [(HOST_A, "ci", PASSWORD_A)]
    assert PASSWORD_A not in repr(on_a)


def test_each_component_gets_its_own_hosts_credential_and_none_without_an_integration() -> None:
    a, b, hub = uuid4(), uuid4(), uuid4()
    connections = {
        a: _connection(a, f"http://{HOST_A}", "pw-a"),
        b: _connection(b, f"https://{HOST_B}", "pw-b"),
        hub: _connection(hub, "https://registry-1.docker.io", "pw-hub"),
    }
    found = credentials_for(
        [
            _component(f"{HOST_A}/api", a, "api"),
            _component(f"{HOST_B}/web", b, "web"),
            _component(f"{HOST_B}/worker", a, "worker"),  # names A's integration on B's host: nothing more
            _component("library/nginx", hub, "proxy"),
            _component(f"{HOST_A}/plain", None, "plain"),
        ],
        connections,
    )
    assert sorted((c.registry, c.password) for c in found) == [
        ("docker.io", "pw-hub"),
        (HOST_A, "pw-a"),
        (HOST_B, "pw-b"),
    ]
    assert registry_host("nginx") == "docker.io" and registry_host("LOCALHOST:5000/x") == "localhost:5000"


class _Integration:
    """Answers the registry-connection query as the integration service would, counting the requests."""

    def __init__(self, connections: list[RegistryConnection], *, fail: bool = False) -> None:
        self.connections = connections
        self.asked: list[GetRegistryConnections] = []
        self.fail = fail

    async def query(self, subject: str, query: Query, *, timeout: float = 5.0) -> Reply:
        assert subject == GET_REGISTRY_CONNECTIONS
        assert isinstance(query, GetRegistryConnections)
        self.asked.append(query)
        if self.fail:
            return Reply.failure(ErrorDetail(code="SYS_UNAVAILABLE", status=503, title="Unavailable", detail="down"))
        wanted = set(query.integration_ids)
        return Reply.success(
            {
                "connections": [c.model_dump(mode="json") for c in self.connections if c.integration_id in wanted],
                "missing": [str(i) for i in wanted - {c.integration_id for c in self.connections}],
            }
        )


async def test_one_request_per_lease_for_every_integration_the_pulling_tasks_name() -> None:
    a, b, gone = uuid4(), uuid4(), uuid4()
    integration = _Integration([_connection(a, f"http://{HOST_A}", "pw-a"), _connection(b, f"http://{HOST_B}", "pw-b")])
    tenant = uuid4()
    tasks: list[dict[str, Any]] = [
        {"type": "deploy", "components": [_component(f"{HOST_A}/api", a)]},
        {"type": "rollback", "components": [_component(f"{HOST_B}/web", b), _component(f"{HOST_A}/x", gone, "x")]},
        {"type": "inspect", "components": [_component(f"{HOST_A}/api", a)]},
        {"type": "deploy", "components": [_component(f"{HOST_A}/api", None)]},
    ]
    await attach_pull_credentials(cast(ServiceClient, integration), tenant, tasks, timeout=1)

    assert len(integration.asked) == 1
    assert integration.asked[0].tenant_id == tenant
    assert sorted(integration.asked[0].integration_ids, key=str) == sorted([a, b, gone], key=str)
    assert [c["password"] for c in tasks[0]["credentials"]] == ["pw-a"]
    assert [(c["registry"], c["password"]) for c in tasks[1]["credentials"]] == [(HOST_B, "pw-b")]
    assert "credentials" not in tasks[2] and "credentials" not in tasks[3]


async def test_no_request_without_integrations_and_no_credentials_when_the_service_is_down() -> None:
    integration = _Integration([])
    plain = [{"type": "deploy", "components": [_component(f"{HOST_A}/api", None)]}]
    await attach_pull_credentials(cast(ServiceClient, integration), uuid4(), plain, timeout=1)
    assert integration.asked == []

    a = uuid4()
    down = _Integration([_connection(a, f"http://{HOST_A}")], fail=True)
    tasks: list[dict[str, Any]] = [{"type": "deploy", "components": [_component(f"{HOST_A}/api", a)]}]
    await attach_pull_credentials(cast(ServiceClient, down), uuid4(), tasks, timeout=1)
    assert len(down.asked) == 1 and "credentials" not in tasks[0]
