"""A deployment from a private registry: the image lives behind ``htpasswd`` authentication, its password only
in the integration service's secret store, and an agent process pulls it with the credential it finds in the
task it leased, which appears nowhere else (the deployment schema's tables, any process's log, the job API).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from nats.aio.client import Client

from stella.testing.docker import DockerEngine, DockerJanitor
from stella.testing.images import push_app_image
from stella.testing.messaging import unique_token
from stella.testing.registry import LocalRegistry, busybox_files

from .conftest import HEADLESS, Stack, _running
from .deployments import Agents, deploy, environment, running_digests, target

pytestmark = [pytest.mark.e2e, pytest.mark.docker]


@pytest_asyncio.fixture
async def deploy_stack(
    fresh_database: str,
    nats_url: str,
    nats: Client,
    stella_namespace: str,
    unique_id: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Stack]:
    monkeypatch.setenv("STELLA_DEPLOYMENT_HEARTBEAT_INTERVAL_S", "1")
    monkeypatch.setenv("STELLA_DEPLOYMENT_TASK_POLL_TIMEOUT_S", "2")
    async with _running(HEADLESS, fresh_database, nats_url, nats, stella_namespace, unique_id, tmp_path) as system:
        yield system


async def _schemas(dsn: str) -> list[str]:
    """Every schema holding tables, besides PostgreSQL's own."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT DISTINCT schemaname FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        )
        return sorted(str(row["schemaname"]) for row in rows)
    finally:
        await conn.close()


async def _table_text(dsn: str, schema: str) -> str:
    """Every row of every table of ``schema``, as text."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
        assert tables, f"no tables in schema {schema}"
        parts = []
        for row in tables:
            name = f'"{schema}"."{row["tablename"]}"'
            parts.append(await conn.fetchval(f"SELECT coalesce(string_agg(t::text, ' '), '') FROM {name} t"))
        return " ".join(parts)
    finally:
        await conn.close()


async def test_an_image_of_a_private_registry_is_deployed_with_the_integrations_credential(
    deploy_stack: Stack,
    fresh_database: str,
    tmp_path: Path,
    docker_engine: DockerEngine,
    docker_janitor: DockerJanitor,
    oci_registry_with_auth: LocalRegistry,
) -> None:
    if busybox_files() is None:
        pytest.skip("busybox-static is not installed")
    stack, registry = deploy_stack, oci_registry_with_auth
    assert registry.credentials is not None
    user, password = registry.credentials
    docker_janitor.add_registry(registry.address)
    marker = unique_token()
    image = push_app_image(registry, f"private/app-{marker}", "v1", f"v1 {marker}")

    status, _, _ = await stack.call(
        "POST", "/api/v1/secrets", json={"name": "registry-login", "value": f"{user}:{password}"}
    )
    assert status == 201
    status, integration, _ = await stack.call(
        "POST",
        "/api/v1/integrations",
        json={
            "type_id": "registry",
            "name": "private-registry",
            "config": {"url": registry.url},
            "credential_ref": "secret:registry-login",
        },
    )
    assert status == 201, integration
    status, component, _ = await stack.call(
        "POST",
        "/api/v1/components",
        json={
            "name": "web",
            "image_repository": image.repository,
            "versioning_strategy": {"resolve": "version-map"},
            "registry_integration_id": integration["id"],
        },
    )
    assert status == 201, component

    agents = Agents(stack, tmp_path, docker_engine, docker_janitor)
    try:
        agent = await agents.start("edge-private")
        dev = await environment(stack, "dev", 0, {})
        made = await target(stack, docker_janitor, dev, "private-1", agent)
        promotion, job = await deploy(stack, "private-1", {"web": image}, dev)
    finally:
        agents.stop_all()

    assert promotion["status"] == "deployed"
    assert image.digest in running_digests(docker_engine, made["id"])
    assert any(
        f"pulling {image.repository}@{image.digest} as {user}" in line for t in job["tasks"] for line in t["logs"]
    )

    # The password went to the agent inside its task, and nowhere else.
    assert password not in str(job)
    status, tasks, _ = await stack.call("GET", f"/api/v1/deployment-jobs/{job['id']}")
    assert status == 200 and password not in str(tasks)
    assert password not in await _table_text(fresh_database, "deployment")
    for schema in await _schemas(fresh_database):  # events, evidence, the secret store (encrypted there)...
        assert password not in await _table_text(fresh_database, schema), schema
    assert password not in agent.log.read_text(errors="replace")
    for path in agent.state_dir.rglob("*"):  # journal, sticker, credential: the agent kept nothing of it
        if path.is_file():
            assert password not in path.read_text(errors="replace"), path
    for log in stack.logs.glob("*.log"):
        assert password not in log.read_text(errors="replace"), log.name
