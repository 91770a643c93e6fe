"""The integration service over real NATS and Postgres: the secret store, integrations, connection tests
against a real htpasswd-protected OCI registry and a local webhook receiver, health, and tenant isolation."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from nats.aio.client import Client

from stella.contracts import integration as c
from stella.contracts.envelope import utcnow
from stella.integration.app import IntegrationApp, create_app
from stella.integration.keys import new_master_key
from stella.testing.messaging import collect_messages
from stella.testing.registry import LocalRegistry
from stella.testing.services import service_client

from .conftest import Caller, RecordCollector


async def _store(caller: Caller, name: str, value: str, **fields) -> c.SecretView:
    reply = await caller.query(c.STORE_SECRET, c.StoreSecret, name=name, value=value, **fields)
    assert reply.ok, reply.error
    return c.SecretView.model_validate(reply.data)


async def _create(caller: Caller, name: str, type_id: str, config: dict, credential_ref: str | None = None) -> dict:
    reply = await caller.command(
        c.CREATE_INTEGRATION,
        c.CreateIntegration,
        name=name,
        type_id=type_id,
        config=config,
        credential_ref=credential_ref,
    )
    assert reply.ok, reply.error
    return reply.data


async def _rows(app: IntegrationApp) -> dict[str, int]:
    async with app.runtime.pool.acquire() as conn:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in ("integrations", "secrets", "outbox")}


async def test_registry_with_basic_auth_through_the_secret_store(
    caller: Caller,
    integration_app: IntegrationApp,
    oci_registry_with_auth: LocalRegistry,
    nats: Client,
    all_logs: RecordCollector,
) -> None:
    registry = oci_registry_with_auth
    assert registry.credentials is not None
    user, password = registry.credentials
    names = integration_app.runtime.names
    async with collect_messages(nats.jetstream(), names.subject("stella.evt.integration.>")) as events:
        stored = await _store(caller, "registry-login", f"{user}:{password}", description="CI registry")
        assert password not in stored.model_dump_json()
        integration = await _create(
            caller, "ci-registry", "registry", {"url": registry.url}, credential_ref="secret:registry-login"
        )
        assert integration["health_status"] == "unknown"

        tested = await caller.command(c.TEST_INTEGRATION, c.TestIntegration, integration_id=integration["id"])
        assert tested.ok, tested.error
        assert tested.data["health_status"] == "healthy", tested.data

        await _store(caller, "registry-wrong", f"{user}:not-the-password")
        changed = await caller.command(
            c.UPDATE_INTEGRATION,
            c.UpdateIntegration,
            integration_id=integration["id"],
            credential_ref="secret:registry-wrong",
        )
        assert changed.ok, changed.error
        wrong = await caller.command(c.TEST_INTEGRATION, c.TestIntegration, integration_id=integration["id"])
        assert wrong.data["health_status"] == "unhealthy"
        assert "refused the credentials" in wrong.data["detail"]
        read = await caller.query(c.GET_INTEGRATION, c.GetIntegration, integration_id=integration["id"])
        assert (read.data["health_status"], read.data["health_detail"]) == ("unhealthy", wrong.data["detail"])

        # secret_stored x2, created, health_changed (unknown -> healthy), updated, health_changed (-> unhealthy)
        received = await events.wait(6)
    health = [json.loads(m.data) for m in received if m.subject.endswith(".health_changed")]
    assert [(h["previous"], h["health_status"]) for h in health] == [("unknown", "healthy"), ("unknown", "unhealthy")]

    # Stored only encrypted: neither the value nor the password is anywhere in the table.
    async with integration_app.runtime.pool.acquire() as conn:
        rows = await conn.fetch("SELECT name, nonce, ciphertext FROM secrets")
        dump = await conn.fetchval("SELECT string_agg(t::text, ' ') FROM secrets t")
    assert {r["name"] for r in rows} == {"registry-login", "registry-wrong"}
    for row in rows:
        assert password.encode() not in bytes(row["ciphertext"])
        assert len(bytes(row["nonce"])) == 12
    assert password not in dump

    listed = await caller.query(c.LIST_SECRETS, c.ListSecrets)
    assert [s["name"] for s in listed.data["items"]] == ["registry-login", "registry-wrong"]
    assert password not in json.dumps(listed.data)
    assert all(password.encode() not in m.data for m in received)
    assert password not in all_logs.text()
    assert all_logs.lines, "the log capture saw nothing: it would not see a leak either"

    # The release service's lookup on the internal bus carries the credential it needs.
    connection = await caller.query(
        c.GET_REGISTRY_CONNECTION, c.GetRegistryConnection, integration_id=integration["id"]
    )
    assert connection.ok, connection.error
    assert (connection.data["username"], connection.data["password"]) == (user, "not-the-password")
    assert "not-the-password" not in repr(c.RegistryConnection.model_validate(connection.data))


async def test_secret_name_collision_is_a_409_and_keeps_the_first_value(
    caller: Caller, integration_app: IntegrationApp
) -> None:
    await _store(caller, "token", "first-value")
    async with integration_app.runtime.pool.acquire() as conn:
        before = await conn.fetchrow("SELECT nonce, ciphertext FROM secrets WHERE name = 'token'")
    counts = await _rows(integration_app)
    again = await caller.query(c.STORE_SECRET, c.StoreSecret, name="token", value="second-value")
    assert (again.error.code, again.error.status) == ("INT_SECRET_EXISTS", 409)
    assert "second-value" not in again.model_dump_json()
    assert await _rows(integration_app) == counts
    async with integration_app.runtime.pool.acquire() as conn:
        after = await conn.fetchrow("SELECT nonce, ciphertext FROM secrets WHERE name = 'token'")
    assert after == before
    gone = await caller.command(c.DELETE_SECRET, c.DeleteSecret, name="token")
    assert gone.ok, gone.error
    assert (await caller.query(c.LIST_SECRETS, c.ListSecrets)).data["items"] == []


@pytest.mark.parametrize(
    ("type_id", "config", "credential_ref", "code"),
    [
        ("ftp", {"url": "https://x.example"}, None, "INT_UNKNOWN_TYPE"),
        ("registry", {"url": "not a url"}, None, "INT_CONFIG_INVALID"),
        ("registry", {"url": "https://r.example", "verify": False}, None, "INT_CONFIG_INVALID"),
        ("notification", {"url": "https://hooks.example/x", "format": "xml"}, None, "INT_CONFIG_INVALID"),
        ("registry", {"url": "https://r.example"}, "secret:missing", "INT_CREDENTIAL_UNRESOLVED"),
        ("registry", {"url": "https://r.example"}, "env:STELLA_DATABASE_URL", "INT_CREDENTIAL_REF_NOT_ALLOWED"),
        ("registry", {"url": "https://r.example"}, "file:/etc/passwd", "INT_CREDENTIAL_REF_NOT_ALLOWED"),
    ],
)
async def test_bad_input_is_a_specific_422_and_stores_nothing(
    caller: Caller, integration_app: IntegrationApp, type_id: str, config: dict, credential_ref: str | None, code: str
) -> None:
    before = await _rows(integration_app)
    reply = await caller.command(
        c.CREATE_INTEGRATION,
        c.CreateIntegration,
        name="bad",
        type_id=type_id,
        config=config,
        credential_ref=credential_ref,
    )
    assert (reply.error.code, reply.error.status) == (code, 422), reply.error
    assert await _rows(integration_app) == before


async def test_a_credential_of_the_wrong_shape_is_refused_without_showing_it(
    caller: Caller, integration_app: IntegrationApp
) -> None:
    await _store(caller, "not-a-login", "just-a-token-without-user")
    before = await _rows(integration_app)
    reply = await caller.command(
        c.CREATE_INTEGRATION,
        c.CreateIntegration,
        name="r",
        type_id="registry",
        config={"url": "https://r.example"},
        credential_ref="secret:not-a-login",
    )
    assert reply.error.code == "INT_CREDENTIAL_INVALID"
    assert "just-a-token" not in reply.model_dump_json()
    assert await _rows(integration_app) == before


async def test_another_tenant_sees_nothing_and_cannot_use_anything(
    caller: Caller, integration_app: IntegrationApp
) -> None:
    await _store(caller, "login", "alice:pw")
    own = await _create(caller, "reg", "registry", {"url": "https://r.example"}, credential_ref="secret:login")
    other = caller.other_tenant()
    iid = own["id"]
    for reply in (
        await other.query(c.GET_INTEGRATION, c.GetIntegration, integration_id=iid),
        await other.query(c.GET_REGISTRY_CONNECTION, c.GetRegistryConnection, integration_id=iid),
        await other.command(c.TEST_INTEGRATION, c.TestIntegration, integration_id=iid),
        await other.command(c.UPDATE_INTEGRATION, c.UpdateIntegration, integration_id=iid, display_name="mine"),
        await other.command(c.DELETE_INTEGRATION, c.DeleteIntegration, integration_id=iid),
    ):
        assert (reply.error.code, reply.error.status) == ("INT_INTEGRATION_NOT_FOUND", 404)
    deleted = await other.command(c.DELETE_SECRET, c.DeleteSecret, name="login")
    assert (deleted.error.code, deleted.error.status) == ("INT_SECRET_NOT_FOUND", 404)
    assert (await other.query(c.LIST_INTEGRATIONS, c.ListIntegrations)).data["items"] == []
    assert (await other.query(c.LIST_SECRETS, c.ListSecrets)).data["items"] == []
    # Naming the first tenant's secret finds nothing in one's own store.
    borrowed = await other.command(
        c.CREATE_INTEGRATION,
        c.CreateIntegration,
        name="reg",
        type_id="registry",
        config={"url": "https://r.example"},
        credential_ref="secret:login",
    )
    assert borrowed.error.code == "INT_CREDENTIAL_UNRESOLVED"
    still = await caller.query(c.GET_INTEGRATION, c.GetIntegration, integration_id=iid)
    assert still.data == own


@pytest.mark.parametrize("credential_refs", [["env:STELLA_TEST_HOOK_TOKEN"]], indirect=True)
async def test_operator_allowed_env_reference_and_slack_webhook(
    caller: Caller, integration_app: IntegrationApp, webhook: WebhookReceiver, monkeypatch
) -> None:
    monkeypatch.setenv("STELLA_TEST_HOOK_TOKEN", "hook-token-value")
    hook = await _create(
        caller,
        "chat",
        "notification",
        {"url": webhook.url, "format": "slack", "template": "[$integration] $message"},
        credential_ref="env:STELLA_TEST_HOOK_TOKEN",
    )
    tested = await caller.command(c.TEST_INTEGRATION, c.TestIntegration, integration_id=hook["id"])
    assert tested.data["health_status"] == "healthy", tested.data
    [(headers, body)] = webhook.received
    assert body == {"text": "[chat] Connection test of the Stella integration chat"}
    assert headers["Authorization"] == "Bearer hook-token-value"
    assert "hook-token-value" not in json.dumps(hook)

    webhook.status = 500
    failing = await caller.command(c.TEST_INTEGRATION, c.TestIntegration, integration_id=hook["id"])
    assert failing.data == {
        **failing.data,
        "health_status": "unhealthy",
        "detail": f"webhook {webhook.host} answered HTTP 500",
    }


async def test_send_notification_delivers_or_says_why_not(
    caller: Caller, integration_app: IntegrationApp, webhook: WebhookReceiver, nats: Client
) -> None:
    hook = await _create(caller, "alerts", "notification", {"url": webhook.url, "template": "$env: $message"})
    store = await _create(caller, "store", "secret-store", {})

    sent = await caller.query(
        c.SEND_NOTIFICATION,
        c.SendNotification,
        integration="alerts",
        message="deployed",
        fields={"env": "prod"},
        idempotency_key="k-1",
    )
    assert sent.ok, sent.error
    assert sent.data == {**sent.data, "integration_id": hook["id"], "name": "alerts", "status": 200}
    [(headers, body)] = webhook.received
    assert body == {
        "text": "prod: deployed",
        "event": "notification",
        "integration": "alerts",
        "fields": {"env": "prod"},
    }
    assert headers["Idempotency-Key"] == "k-1"

    webhook.status = 500
    failed = await caller.query(c.SEND_NOTIFICATION, c.SendNotification, integration=hook["id"], message="x")
    assert (failed.error.code, failed.error.status) == ("INT_NOTIFICATION_FAILED", 502)
    assert "answered HTTP 500" in failed.error.detail
    wrong = await caller.query(c.SEND_NOTIFICATION, c.SendNotification, integration=store["id"], message="x")
    assert (wrong.error.code, wrong.error.status) == ("INT_NOT_A_NOTIFICATION", 422)
    async with service_client(nats, integration_app.runtime.names) as client:
        other = Caller(client, tenant_id=uuid.uuid4())
        for ref in ("alerts", hook["id"]):
            hidden = await other.query(c.SEND_NOTIFICATION, c.SendNotification, integration=ref, message="x")
            assert (hidden.error.code, hidden.error.status) == ("INT_INTEGRATION_NOT_FOUND", 404)
    assert len(webhook.received) == 2


async def test_scheduled_health_check_records_and_announces_a_change(
    caller: Caller, integration_app: IntegrationApp, webhook: WebhookReceiver, nats: Client
) -> None:
    hook = await _create(caller, "hook", "notification", {"url": webhook.url})
    handlers = integration_app.handlers
    assert handlers is not None
    names = integration_app.runtime.names
    async with collect_messages(nats.jetstream(), names.subject(c.INTEGRATION_HEALTH_CHANGED)) as changes:
        checked = await handlers.run_due_checks(utcnow() + timedelta(seconds=1))
        assert checked >= 1
        [msg] = await changes.wait(1)
    event = c.IntegrationHealthChanged.model_validate_json(msg.data)
    assert (event.integration_id, event.health_status) == (uuid.UUID(hook["id"]), c.HealthStatus.HEALTHY)
    assert webhook.received[0][1]["event"] == "connection_test"
    # Not due again until the interval has passed.
    assert await handlers.run_due_checks(utcnow() + timedelta(seconds=2)) == 0


async def test_master_key_rotation_rewraps_data_keys(
    caller: Caller, integration_app: IntegrationApp, make_settings, master_key_file: Path, tmp_path: Path, nats
) -> None:
    await _store(caller, "login", "alice:pw")
    integration = await _create(caller, "reg", "registry", {"url": "https://r.example"}, credential_ref="secret:login")
    async with integration_app.runtime.pool.acquire() as conn:
        before = await conn.fetchrow("SELECT master_key_id, wrapped_key FROM data_keys")
    await integration_app.stop()

    new_key = tmp_path / "new.key"
    new_key.write_text(new_master_key())
    rotated = create_app(make_settings(new_key, (master_key_file,)))
    await rotated.start()
    try:
        async with rotated.runtime.pool.acquire() as conn:
            after = await conn.fetchrow("SELECT master_key_id, wrapped_key, rewrapped_at FROM data_keys")
        assert after["master_key_id"] != before["master_key_id"]
        assert after["wrapped_key"] != before["wrapped_key"] and after["rewrapped_at"] is not None
        connection = await caller.query(
            c.GET_REGISTRY_CONNECTION, c.GetRegistryConnection, integration_id=integration["id"]
        )
        assert connection.data["password"] == "pw", connection.error
    finally:
        await rotated.stop()
    await integration_app.start()  # the fixture stops it again
    # Without the former key, the data key can no longer be read: the old key really was replaced.
    async with integration_app.runtime.pool.acquire() as conn:
        assert await conn.fetchval("SELECT master_key_id FROM data_keys") == after["master_key_id"]
    lost = await caller.query(c.GET_REGISTRY_CONNECTION, c.GetRegistryConnection, integration_id=integration["id"])
    assert not lost.ok


class WebhookReceiver:
    """A local HTTP endpoint recording what is POSTed to it."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], dict]] = []
        self.status = 200
        self.host = ""
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.json()))
        return web.Response(status=self.status)


@pytest_asyncio.fixture
async def webhook() -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    receiver.host = f"127.0.0.1:{port}"
    receiver.url = f"http://{receiver.host}/hook"
    try:
        yield receiver
    finally:
        await runner.cleanup()
