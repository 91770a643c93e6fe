"""The ``vault`` integration type and ``vault:<path>#<key>`` credential references, through ``hvac``.

No HashiCorp Vault or OpenBao server can be installed on this project's machines (neither is packaged by
Debian, and no PyPI package ships the server), so these tests run ``hvac`` against :class:`KvServer`: a small
HTTP server written here that implements the Vault API endpoints ``hvac`` calls (``GET /v1/sys/health``,
``GET /v1/auth/token/lookup-self``, ``GET /v1/<mount>/data/<path>``) with Vault's answer shapes, its token
check (``X-Vault-Token``, 403 ``permission denied``) and namespaces (``X-Vault-Namespace``). The rest is real:
the integration service on real Postgres and NATS, the token in the encrypted secret store, and a registry
credential read from the vault and tested against the real htpasswd registry.
"""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from ipaddress import ip_network
from pathlib import Path

import pytest_asyncio
from aiohttp import web

from stella.contracts import integration as c
from stella.contracts.envelope import ErrorDetail
from stella.contracts.integration import HealthStatus
from stella.integration.app import IntegrationApp
from stella.integration.vault import VaultClient
from stella.kit.addresses import AddressPolicy
from stella.testing.pki import make_pki
from stella.testing.registry import LocalRegistry

from .conftest import Caller, RecordCollector


@dataclass
class KvServer:
    """A Vault KV version 2 API on loopback: ``secrets[(namespace, mount, path)] = {field: value}``."""

    token: str
    secrets: dict[tuple[str, str, str], dict[str, str]] = field(default_factory=dict)
    sealed: bool = False
    seen: list[tuple[str, str, str]] = field(default_factory=list)
    """``(method, path, namespace)`` of every request."""
    url: str = ""

    def _denied(self, request: web.Request) -> web.Response | None:
        if request.headers.get("X-Vault-Token") != self.token:
            return web.json_response({"errors": ["permission denied"]}, status=403)
        return None

    async def health(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path, request.headers.get("X-Vault-Namespace", "")))
        body = {"initialized": True, "sealed": self.sealed, "standby": False, "version": "1.15.0"}
        return web.json_response(body, status=503 if self.sealed else 200)

    async def lookup_self(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path, request.headers.get("X-Vault-Namespace", "")))
        if (denied := self._denied(request)) is not None:
            return denied
        return web.json_response({"data": {"accessor": "a1", "policies": ["default"], "ttl": 0}})

    async def kv_data(self, request: web.Request) -> web.Response:
        namespace = request.headers.get("X-Vault-Namespace", "")
        self.seen.append((request.method, request.path, namespace))
        if (denied := self._denied(request)) is not None:
            return denied
        if self.sealed:
            return web.json_response({"errors": ["Vault is sealed"]}, status=503)
        mount, _, rest = request.match_info["tail"].partition("/data/")
        found = self.secrets.get((namespace.strip("/"), mount, rest))
        if found is None:
            return web.json_response({"errors": []}, status=404)
        metadata = {"version": 1, "deletion_time": "", "destroyed": False, "created_time": "2026-01-01T00:00:00Z"}
        return web.json_response({"data": {"data": found, "metadata": metadata}, "lease_duration": 0})


@asynccontextmanager
async def _serving(server: KvServer, tls: ssl.SSLContext | None = None) -> AsyncIterator[KvServer]:
    app = web.Application()
    app.router.add_get("/v1/sys/health", server.health)
    app.router.add_get("/v1/auth/token/lookup-self", server.lookup_self)
    app.router.add_get("/v1/{tail:.+}", server.kv_data)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture
async def kv_server() -> AsyncIterator[KvServer]:
    async with _serving(KvServer(token=f"hvs.{uuid.uuid4().hex}")) as server:
        yield server


async def _rows(app: IntegrationApp) -> dict[str, int]:
    async with app.runtime.pool.acquire() as conn:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in ("integrations", "secrets")}


async def _vault(caller: Caller, server: KvServer, token: str, **config: str) -> dict:
    stored = await caller.query(c.STORE_SECRET, c.StoreSecret, name="vault-token", value=token)
    assert stored.ok, stored.error
    created = await caller.command(
        c.CREATE_INTEGRATION,
        c.CreateIntegration,
        name="vault",
        type_id="vault",
        config={"address": server.url, **config},
        credential_ref="secret:vault-token",
    )
    assert created.ok, created.error
    return created.data


async def test_a_registry_credential_is_read_from_vault_and_the_token_never_shows(
    caller: Caller,
    integration_app: IntegrationApp,
    kv_server: KvServer,
    oci_registry_with_auth: LocalRegistry,
    all_logs: RecordCollector,
) -> None:
    registry = oci_registry_with_auth
    assert registry.credentials is not None
    user, password = registry.credentials
    kv_server.secrets[("team-a", "kv", "ci/registry")] = {"login": f"{user}:{password}", "other": "x"}
    vault = await _vault(caller, kv_server, kv_server.token, mount="kv", namespace="team-a")

    tested = await caller.command(c.TEST_INTEGRATION, c.TestIntegration, integration_id=vault["id"])
    assert tested.data["health_status"] == "healthy", tested.data
    assert ("GET", "/v1/auth/token/lookup-self", "team-a") in kv_server.seen

    registry_integration = await caller.command(
        c.CREATE_INTEGRATION,
        c.CreateIntegration,
        name="ci-registry",
        type_id="registry",
        config={"url": registry.url},
        credential_ref="vault:ci/registry#login",
    )
    assert registry_integration.ok, registry_integration.error
    assert ("GET", "/v1/kv/data/ci/registry", "team-a") in kv_server.seen
    iid = registry_integration.data["id"]
    reg_tested = await caller.command(c.TEST_INTEGRATION, c.TestIntegration, integration_id=iid)
    assert reg_tested.data["health_status"] == "healthy", reg_tested.data
    connection = await caller.query(c.GET_REGISTRY_CONNECTION, c.GetRegistryConnection, integration_id=iid)
    assert (connection.data["username"], connection.data["password"]) == (user, password)

    # The vault changes: the next use reads the new value, and a wrong one makes the health say so.
    kv_server.secrets[("team-a", "kv", "ci/registry")] = {"login": f"{user}:wrong-{password}"}
    wrong = await caller.command(c.TEST_INTEGRATION, c.TestIntegration, integration_id=iid)
    assert (wrong.data["health_status"], "refused the credentials" in wrong.data["detail"]) == ("unhealthy", True)

    # Nothing read from the vault is stored, and neither it nor the token is in any answer or log line.
    async with integration_app.runtime.pool.acquire() as conn:
        dump = await conn.fetchval("SELECT string_agg(t::text, ' ') FROM integrations t")
        outbox = await conn.fetchval("SELECT string_agg(t::text, ' ') FROM outbox t")
    for value in (password, kv_server.token):
        assert value not in dump and value not in outbox
        assert value not in all_logs.text()
        for reply in (tested, registry_integration, reg_tested, wrong):
            assert value not in reply.model_dump_json()
    assert all_logs.lines


async def test_a_wrong_token_a_sealed_vault_and_a_refused_address_make_the_health_say_so(
    caller: Caller, kv_server: KvServer
) -> None:
    vault = await _vault(caller, kv_server, "hvs.not-the-token")
    refused = await caller.command(c.TEST_INTEGRATION, c.TestIntegration, integration_id=vault["id"])
    assert refused.data["health_status"] == "unhealthy"
    assert "refused the token" in refused.data["detail"]
    assert "hvs.not-the-token" not in json.dumps(refused.data)

    kv_server.sealed = True
    sealed = await caller.command(c.TEST_INTEGRATION, c.TestIntegration, integration_id=vault["id"])
    assert "sealed" in sealed.data["detail"]

    metadata = await caller.command(
        c.CREATE_INTEGRATION,
        c.CreateIntegration,
        name="metadata",
        type_id="vault",
        config={"address": "https://169.254.169.254:8200"},
        credential_ref="secret:vault-token",
    )
    assert metadata.ok, metadata.error
    blocked = await caller.command(c.TEST_INTEGRATION, c.TestIntegration, integration_id=metadata.data["id"])
    assert blocked.data["health_status"] == "unhealthy"
    assert "STELLA_INTEGRATION_ALLOWED_NETWORKS" in blocked.data["detail"], blocked.data


async def test_unreadable_vault_references_are_a_422_and_store_nothing(
    caller: Caller, integration_app: IntegrationApp, kv_server: KvServer
) -> None:
    async def create(name: str, type_id: str, config: dict, ref: str) -> ErrorDetail:
        before = await _rows(integration_app)
        reply = await caller.command(
            c.CREATE_INTEGRATION, c.CreateIntegration, name=name, type_id=type_id, config=config, credential_ref=ref
        )
        assert reply.error is not None
        assert await _rows(integration_app) == before
        return reply.error

    registry = {"url": "https://r.example"}
    none_yet = await create("r", "registry", registry, "vault:ci/registry#login")
    assert (none_yet.code, none_yet.status) == ("INT_CREDENTIAL_UNRESOLVED", 422)
    assert "has none" in none_yet.detail

    kv_server.secrets[("", "secret", "ci/registry")] = {"login": "alice:pw"}
    await _vault(caller, kv_server, kv_server.token)
    missing = await create("r", "registry", registry, "vault:ci/elsewhere#login")
    assert (missing.code, "has nothing at secret/data/ci/elsewhere" in missing.detail) == (
        "INT_CREDENTIAL_UNRESOLVED",
        True,
    )
    no_field = await create("r", "registry", registry, "vault:ci/registry#password")
    assert "has no field 'password'" in no_field.detail
    loop = await create("v2", "vault", {"address": kv_server.url}, "vault:ci/registry#login")
    assert (loop.code, loop.status) == ("INT_CREDENTIAL_REF_NOT_ALLOWED", 422)
    bad_config = await create("v3", "vault", {"address": kv_server.url, "mount": "../sys"}, "secret:vault-token")
    assert bad_config.code == "INT_CONFIG_INVALID"
    for value in ("alice:pw", kv_server.token):
        assert all(value not in e.model_dump_json() for e in (missing, no_field, loop))

    # Another tenant's references do not reach this tenant's vault.
    other = caller.other_tenant()
    theirs = await other.command(
        c.CREATE_INTEGRATION,
        c.CreateIntegration,
        name="r",
        type_id="registry",
        config=registry,
        credential_ref="vault:ci/registry#login",
    )
    assert (theirs.error.code, "has none" in theirs.error.detail) == ("INT_CREDENTIAL_UNRESOLVED", True)


async def test_a_vault_name_resolving_to_a_refused_address_is_not_reached(kv_server: KvServer) -> None:
    port = kv_server.url.rsplit(":", 1)[1]
    config = {"address": f"http://localhost:{port}"}
    allowed = await VaultClient(timeout_s=3, addresses=AddressPolicy((ip_network("127.0.0.0/8"),))).probe(
        config, kv_server.token
    )
    assert allowed.status is HealthStatus.HEALTHY, allowed.detail
    seen = len(kv_server.seen)
    refused = await VaultClient(timeout_s=3, addresses=AddressPolicy()).probe(config, kv_server.token)
    assert refused.status is HealthStatus.UNHEALTHY
    assert "localhost resolves to no address a vault request may reach" in refused.detail, refused.detail
    assert len(kv_server.seen) == seen


async def test_a_vault_over_tls_from_a_private_ca_is_trusted_only_with_its_ca_pem(
    caller: Caller, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    server = KvServer(token=f"hvs.{uuid.uuid4().hex}")
    server.secrets[("", "secret", "ci/registry")] = {"login": "alice:pw"}
    async with _serving(server, pki.server_context()):
        assert server.url.startswith("https://")
        vault = await _vault(caller, server, server.token)
        untrusted = await caller.command(c.TEST_INTEGRATION, c.TestIntegration, integration_id=vault["id"])
        assert untrusted.data["health_status"] == "unhealthy"
        assert untrusted.data["detail"].startswith(f"TLS with vault {server.url.removeprefix('https://')} failed")
        assert server.seen == []

        trusted = await caller.command(
            c.UPDATE_INTEGRATION,
            c.UpdateIntegration,
            integration_id=vault["id"],
            config={"address": server.url, "ca_pem": pki.ca_pem},
        )
        assert trusted.ok, trusted.error
        tested = await caller.command(c.TEST_INTEGRATION, c.TestIntegration, integration_id=vault["id"])
        assert tested.data["health_status"] == "healthy", tested.data
        registry = await caller.command(
            c.CREATE_INTEGRATION,
            c.CreateIntegration,
            name="r",
            type_id="registry",
            config={"url": "https://r.example"},
            credential_ref="vault:ci/registry#login",
        )
        assert registry.ok, registry.error
