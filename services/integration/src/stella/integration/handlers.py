"""Use cases of the integration service: load -> domain -> save + outbox, in one transaction.

Outbound work (a connection test) happens before the transaction that records its outcome, so no
connection is held while an outside system answers. A secret value exists in clear only in memory, between
decrypting it and handing it to a connector or to the release service's request; it is never logged,
returned by the API, put in an event or in an error message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast
from uuid import UUID, uuid4

import asyncpg
from pydantic import SecretStr

from stella.contracts.envelope import Command, Page, Reply, utcnow
from stella.contracts.integration import (
    INTEGRATION_CREATED,
    INTEGRATION_DELETED,
    INTEGRATION_HEALTH_CHANGED,
    INTEGRATION_UPDATED,
    SECRET_DELETED,
    SECRET_STORED,
    ConnectionTestResult,
    CreateIntegration,
    DeleteIntegration,
    DeleteSecret,
    GetIntegration,
    GetRegistryConnection,
    GetRegistryConnections,
    HealthStatus,
    IntegrationCreated,
    IntegrationDeleted,
    IntegrationHealthChanged,
    IntegrationUpdated,
    IntegrationView,
    ListIntegrations,
    ListIntegrationTypes,
    ListSecrets,
    NotificationSent,
    RegistryConnection,
    RegistryConnections,
    SecretDeleted,
    SecretStored,
    SendNotification,
    StoreSecret,
    TestIntegration,
    UpdateIntegration,
)
from stella.integration import domain, keys, repo
from stella.integration.connectors import Connectors, Probe
from stella.integration.vault import VaultClient, VaultError
from stella.kit.broker import CommandProcessor
from stella.kit.credentials import HostCredentialAllowList
from stella.kit.errors import ServiceError, error_detail
from stella.kit.outbox import add_events

log = logging.getLogger(__name__)

DUE_BATCH = 20
"""Integrations one scheduled round claims at most."""


class Handlers:
    """The integration service's command, request and query handlers, and its health schedule."""

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        commands: CommandProcessor,
        connectors: Connectors,
        keyring: keys.Keyring,
        *,
        vault: VaultClient | None = None,
        host_refs: HostCredentialAllowList | None = None,
        insecure_hosts: list[str] | None = None,
        health_interval: timedelta = timedelta(minutes=5),
        clock: Callable[[], datetime] = utcnow,
        new_id: Callable[[], UUID] = uuid4,
    ) -> None:
        self._pool = pool
        self.commands = commands
        self.connectors = connectors
        self.keyring = keyring
        self.vault = vault or VaultClient()
        self.host_refs = host_refs or HostCredentialAllowList()
        self.insecure_hosts = insecure_hosts if insecure_hosts is not None else ["localhost", "127.0.0.1", "[::1]"]
        self.health_interval = health_interval
        self.clock = clock
        self.new_id = new_id

    # --- keys and secrets -------------------------------------------------------------------------------

    async def _data_key(self, conn: asyncpg.Connection, tenant: UUID) -> bytes:
        """The tenant's data key in clear, created (and stored wrapped) on first use."""
        stored = await repo.get_data_key(conn, tenant)
        if stored is None:
            fresh = keys.new_data_key()
            wrapped = repo.WrappedKey(self.keyring.current.key_id, self.keyring.current.wrap(tenant, fresh))
            await repo.insert_data_key(conn, tenant, wrapped, self.clock())
            stored = await repo.get_data_key(conn, tenant)
            assert stored is not None
        return self.keyring.get(stored.master_key_id).unwrap(tenant, stored.wrapped)

    async def rotate_data_keys(self) -> int:
        """Re-wrap every data key not wrapped by the current master key; how many were re-wrapped."""
        current = self.keyring.current
        count = 0
        async with self._pool().acquire() as conn, conn.transaction():
            for tenant, stored in await repo.data_keys_not_under(conn, current.key_id):
                try:
                    data_key = self.keyring.get(stored.master_key_id).unwrap(tenant, stored.wrapped)
                except keys.KeyUnavailable as exc:
                    log.error("a data key cannot be re-wrapped", extra={"tenant_id": str(tenant), "error": str(exc)})
                    continue
                await repo.rewrap_data_key(
                    conn, tenant, repo.WrappedKey(current.key_id, current.wrap(tenant, data_key)), self.clock()
                )
                count += 1
        if count:
            log.info("data keys re-wrapped by the current master key", extra={"count": count})
        return count

    async def store_secret(self, req: StoreSecret) -> Reply:
        """Encrypt and store a new secret; a taken name is refused and nothing is stored."""

        async def execute(conn: asyncpg.Connection) -> object:
            data_key = await self._data_key(conn, req.tenant_id)
            nonce, ciphertext = keys.encrypt_value(data_key, req.tenant_id, req.name, req.value.get_secret_value())
            view = await repo.insert_secret(
                conn, req.tenant_id, req.name, req.description, nonce, ciphertext, req.actor_id, self.clock()
            )
            if view is None:
                raise domain.SecretNameTaken(f"a secret named {req.name!r} already exists; delete it first")
            await add_events(conn, [(SECRET_STORED, req.caused(SecretStored, secret=view))])
            return view.model_dump(mode="json")

        # A request, not a command (its value must not rest in the commands stream), de-duplicated the same way.
        return await self.commands.run(cast(Command, req), execute)

    async def delete_secret(self, cmd: DeleteSecret) -> Reply:
        """Delete a secret no integration names."""

        async def execute(conn: asyncpg.Connection) -> object:
            user = await repo.integration_using(conn, cmd.tenant_id, f"secret:{cmd.name}")
            if user is not None:
                raise domain.SecretInUse(f"integration {user!r} uses secret {cmd.name!r}")
            if not await repo.delete_secret(conn, cmd.tenant_id, cmd.name):
                raise domain.SecretNotFound(f"secret {cmd.name!r} does not exist")
            await add_events(conn, [(SECRET_DELETED, cmd.caused(SecretDeleted, name=cmd.name))])
            return {"name": cmd.name, "deleted": True}

        return await self.commands.run(cmd, execute)

    async def list_secrets(self, q: ListSecrets) -> Reply:
        """A page of the tenant's secrets' metadata."""
        async with self._pool().acquire() as conn:
            items, token = await repo.list_secrets(conn, q.tenant_id, q.page.page_size, q.page.page_token)
        return Reply.success(Page(items=[i.model_dump(mode="json") for i in items], next_page_token=token).model_dump())

    async def _resolve(self, conn: asyncpg.Connection, tenant: UUID, ref: str) -> str:
        """The text behind a credential reference.

        A ``vault:<path>#<key>`` reference is read from the tenant's ``vault`` integration (with its token from
        the secret store or an allowed host reference) while ``conn`` is held: the read is bounded by the
        request timeout.

        Raises:
            CredentialRefNotAllowed: an operator-only reference the tenant may not use.
            CredentialUnresolved: nothing readable behind it.
        """
        parsed = domain.CredentialRef.parse(ref)
        if parsed.scheme == "vault":
            vault = await self._tenant_vault(conn, tenant)
            if vault.credential_ref is None or vault.credential_ref.startswith("vault:"):
                raise domain.CredentialUnresolved(f"the vault integration {vault.name!r} has no token")
            token = await self._resolve(conn, tenant, vault.credential_ref)
            try:
                return await self.vault.read(vault.config, token, parsed.target, parsed.key)
            except VaultError as exc:
                raise domain.CredentialUnresolved(f"{ref!r} cannot be read: {exc}") from None
        if parsed.operator_only:
            if not self.host_refs.allows(tenant, ref):
                raise domain.CredentialRefNotAllowed(
                    f"the credential reference {ref!r} is not one this tenant may use; the operator lists the "
                    "allowed ones in STELLA_INTEGRATION_CREDENTIAL_REFS (use secret:<name> for the secret store)"
                )
            value = self.host_refs.read(ref)
            if value is None:
                raise domain.CredentialUnresolved(f"the secret named by {ref!r} could not be read")
            return value
        found = await repo.get_secret_ciphertext(conn, tenant, parsed.target)
        if found is None:
            raise domain.CredentialUnresolved(f"there is no secret named {parsed.target!r}")
        return keys.decrypt_value(await self._data_key(conn, tenant), tenant, parsed.target, *found)

    async def _tenant_vault(self, conn: asyncpg.Connection, tenant: UUID) -> IntegrationView:
        """The tenant's one ``vault`` integration, which ``vault:`` references are read from.

        Raises:
            CredentialUnresolved: the tenant has none, or several (a reference does not say which).
        """
        found, _ = await repo.list_integrations(conn, tenant, domain.VAULT, 2, None)
        if not found:
            raise domain.CredentialUnresolved("vault: references need a vault integration; the tenant has none")
        if len(found) > 1:
            raise domain.CredentialUnresolved(
                "vault: references are read from the tenant's one vault integration; the tenant has several"
            )
        return found[0]

    async def _check_credential(self, conn: asyncpg.Connection, tenant: UUID, type_id: str, ref: str | None) -> None:
        if ref is not None and type_id == domain.VAULT and ref.startswith("vault:"):
            raise domain.VaultRefNotAllowed("a vault integration's token cannot itself come from a vault")
        if ref is not None:
            domain.validate_credential(type_id, await self._resolve(conn, tenant, ref))

    # --- integrations -----------------------------------------------------------------------------------

    async def list_integration_types(self, _: ListIntegrationTypes) -> Reply:
        """Every integration type with its schemas."""
        return Reply.success([t.model_dump(mode="json") for t in domain.TYPES.values()])

    async def _precheck_credential(self, cmd: Command, tenant: UUID, type_id: str, ref: str | None) -> Reply | None:
        """Check a credential before the command's transaction (reading it may ask a vault); a reply to send
        instead of handling the command (its stored reply, or the refusal), None to go on."""
        if ref is None:
            return None
        if (stored := await self.commands.seen(cmd)) is not None:
            return stored
        try:
            async with self._pool().acquire() as conn:
                await self._check_credential(conn, tenant, type_id, ref)
        except ServiceError as exc:
            return Reply.failure(error_detail(exc))
        return None

    async def create_integration(self, cmd: CreateIntegration) -> Reply:
        """Create an integration of a known type whose config matches the type's schema.

        The credential is checked before the transaction, so a vault read holds no transaction open.
        """
        try:
            domain.validate_config(cmd.type_id, cmd.config, self.insecure_hosts)
        except ServiceError as exc:
            return Reply.failure(error_detail(exc))
        if (early := await self._precheck_credential(cmd, cmd.tenant_id, cmd.type_id, cmd.credential_ref)) is not None:
            return early

        async def execute(conn: asyncpg.Connection) -> object:
            fields = cmd.model_dump(include={"type_id", "name", "config", "credential_ref"})
            fields["display_name"] = cmd.display_name or cmd.name
            view = await repo.insert_integration(conn, cmd.tenant_id, self.new_id(), fields, self.clock())
            if view is None:
                raise domain.IntegrationNameTaken(f"an integration named {cmd.name!r} already exists")
            await add_events(conn, [(INTEGRATION_CREATED, cmd.caused(IntegrationCreated, integration=view))])
            return view.model_dump(mode="json")

        return await self.commands.run(cmd, execute)

    async def update_integration(self, cmd: UpdateIntegration) -> Reply:
        """Change an integration's display name, config or credential; its health is unknown until tested.

        A new credential is checked before the transaction (see :meth:`create_integration`).
        """
        if cmd.credential_ref is not None and not cmd.clear_credential_ref:
            async with self._pool().acquire() as conn:
                existing = await repo.get_integration(conn, cmd.tenant_id, cmd.integration_id)
            if existing is not None:
                early = await self._precheck_credential(cmd, cmd.tenant_id, existing.type_id, cmd.credential_ref)
                if early is not None:
                    return early

        async def execute(conn: asyncpg.Connection) -> object:
            current = await repo.get_integration(conn, cmd.tenant_id, cmd.integration_id)
            if current is None:
                raise domain.IntegrationNotFound(f"integration {cmd.integration_id} does not exist")
            changes: dict[str, Any] = cmd.model_dump(
                include={"display_name", "config", "credential_ref"}, exclude_none=True
            )
            if cmd.clear_credential_ref:
                changes["credential_ref"] = None
            updated = current.model_copy(update=changes)
            domain.validate_config(updated.type_id, updated.config, self.insecure_hosts)
            if updated == current:
                return current.model_dump(mode="json")
            view = await repo.update_integration(conn, cmd.tenant_id, updated, self.clock())
            await add_events(conn, [(INTEGRATION_UPDATED, cmd.caused(IntegrationUpdated, integration=view))])
            return view.model_dump(mode="json")

        return await self.commands.run(cmd, execute)

    async def delete_integration(self, cmd: DeleteIntegration) -> Reply:
        """Delete an integration."""

        async def execute(conn: asyncpg.Connection) -> object:
            name = await repo.delete_integration(conn, cmd.tenant_id, cmd.integration_id)
            if name is None:
                raise domain.IntegrationNotFound(f"integration {cmd.integration_id} does not exist")
            await add_events(
                conn,
                [(INTEGRATION_DELETED, cmd.caused(IntegrationDeleted, integration_id=cmd.integration_id, name=name))],
            )
            return {"id": str(cmd.integration_id), "deleted": True}

        return await self.commands.run(cmd, execute)

    async def get_integration(self, q: GetIntegration) -> Reply:
        """One integration."""
        async with self._pool().acquire() as conn:
            view = await repo.get_integration(conn, q.tenant_id, q.integration_id)
        if view is None:
            raise domain.IntegrationNotFound(f"integration {q.integration_id} does not exist")
        return Reply.success(view.model_dump(mode="json"))

    async def list_integrations(self, q: ListIntegrations) -> Reply:
        """A page of integrations."""
        async with self._pool().acquire() as conn:
            items, token = await repo.list_integrations(
                conn, q.tenant_id, q.type_id, q.page.page_size, q.page.page_token
            )
        return Reply.success(Page(items=[i.model_dump(mode="json") for i in items], next_page_token=token).model_dump())

    # --- connection tests and health --------------------------------------------------------------------

    async def _probe(self, tenant: UUID, view: IntegrationView) -> Probe:
        """Run the type's connection test; a credential that cannot be read is an unhealthy outcome."""
        try:
            async with self._pool().acquire() as conn:
                credential = await self._resolve(conn, tenant, view.credential_ref) if view.credential_ref else None
                if view.type_id == domain.SECRET_STORE:
                    await self._data_key(conn, tenant)
        except (ServiceError, keys.KeyUnavailable) as exc:
            return Probe(HealthStatus.UNHEALTHY, f"the credential cannot be used: {exc}")
        if view.type_id == domain.REGISTRY:
            username, _, password = (credential or "").partition(":")
            return await self.connectors.probe_registry(
                view.config["url"],
                ca_pem=view.config.get("ca_pem"),
                username=username or None,
                password=password or None,
            )
        if view.type_id == domain.VAULT:
            return await self.vault.probe(view.config, credential)
        if view.type_id == domain.NOTIFICATION:
            body = domain.notification_body(
                view.config, view.name, "connection_test", f"Connection test of the Stella integration {view.name}"
            )
            return await self.connectors.post_webhook(view.config["url"], body, token=credential)
        return Probe(HealthStatus.HEALTHY, "the secret store's data key is readable")

    async def _record(
        self, conn: asyncpg.Connection, tenant: UUID, iid: UUID, probe: Probe, cause: Command | None
    ) -> ConnectionTestResult | None:
        now = self.clock()
        recorded = await repo.record_health(
            conn, tenant, iid, probe.status, probe.detail, now, now + self.health_interval
        )
        if recorded is None:
            return None
        previous, view = recorded
        if domain.health_changed(previous, probe.status):
            fields: dict[str, Any] = {
                "integration_id": view.id,
                "name": view.name,
                "type_id": view.type_id,
                "previous": previous,
                "health_status": probe.status,
                "detail": probe.detail,
            }
            event = (
                cause.caused(IntegrationHealthChanged, **fields)
                if cause is not None
                else IntegrationHealthChanged(tenant_id=tenant, correlation_id=self.new_id(), **fields)
            )
            await add_events(conn, [(INTEGRATION_HEALTH_CHANGED, event)])
        return ConnectionTestResult(
            integration_id=view.id, health_status=probe.status, detail=probe.detail, checked_at=now
        )

    async def test_integration(self, cmd: TestIntegration) -> Reply:
        """Run the connection test now and record the health (an event when it changed)."""
        if (stored := await self.commands.seen(cmd)) is not None:
            return stored
        async with self._pool().acquire() as conn:
            view = await repo.get_integration(conn, cmd.tenant_id, cmd.integration_id)
        if view is None:
            return Reply.failure(
                error_detail(domain.IntegrationNotFound(f"integration {cmd.integration_id} does not exist"))
            )
        probe = await self._probe(cmd.tenant_id, view)

        async def execute(conn: asyncpg.Connection) -> object:
            result = await self._record(conn, cmd.tenant_id, cmd.integration_id, probe, cmd)
            if result is None:
                raise domain.IntegrationNotFound(f"integration {cmd.integration_id} was deleted during the test")
            return result.model_dump(mode="json")

        return await self.commands.run(cmd, execute)

    async def next_check(self) -> datetime | None:
        """When the next scheduled connection test is due."""
        async with self._pool().acquire() as conn:
            return await repo.next_check(conn)

    async def run_due_checks(self, now: datetime) -> int:
        """Test every integration whose scheduled check is due; how many were tested."""
        async with self._pool().acquire() as conn, conn.transaction():
            due = await repo.claim_due(conn, now, now + self.health_interval, DUE_BATCH)
        for tenant, iid in due:
            async with self._pool().acquire() as conn:
                view = await repo.get_integration(conn, tenant, iid)
            if view is None:
                continue
            probe = await self._probe(tenant, view)
            async with self._pool().acquire() as conn, conn.transaction():
                await self._record(conn, tenant, iid, probe, None)
        return len(due)

    # --- the release service's registry lookups ---------------------------------------------------------

    async def get_registry_connection(self, q: GetRegistryConnection) -> Reply:
        """A registry integration's URL, CA and decrypted credential (internal bus only)."""
        async with self._pool().acquire() as conn:
            view = await repo.get_integration(conn, q.tenant_id, q.integration_id)
            if view is None:
                raise domain.IntegrationNotFound(f"integration {q.integration_id} does not exist")
            if view.type_id != domain.REGISTRY:
                raise domain.NotARegistry(f"integration {view.name!r} is of type {view.type_id!r}, not registry")
            credential = await self._resolve(conn, q.tenant_id, view.credential_ref) if view.credential_ref else None
        username, _, password = (credential or "").partition(":")
        connection = RegistryConnection(
            integration_id=view.id,
            url=view.config["url"],
            ca_pem=view.config.get("ca_pem"),
            username=username or None,
            password=SecretStr(password) if password else None,
        )
        return Reply.success(connection.model_dump(mode="json"))

    async def get_registry_connections(self, q: GetRegistryConnections) -> Reply:
        """Several registry integrations' URLs, CAs and decrypted credentials at once (internal bus only; asked
        by the deployment service when it leases tasks to an agent). Ids naming no registry integration of the
        tenant, or one whose credential cannot be read, are listed as missing."""
        connections: list[RegistryConnection] = []
        missing: list[UUID] = []
        async with self._pool().acquire() as conn:
            views = {v.id: v for v in await repo.get_integrations(conn, q.tenant_id, sorted(set(q.integration_ids)))}
            for iid in dict.fromkeys(q.integration_ids):
                view = views.get(iid)
                if view is None or view.type_id != domain.REGISTRY:
                    missing.append(iid)
                    continue
                try:
                    credential = (
                        await self._resolve(conn, q.tenant_id, view.credential_ref) if view.credential_ref else None
                    )
                except (domain.CredentialUnresolved, domain.CredentialRefNotAllowed, domain.CredentialInvalid) as exc:
                    log.warning("the credential of registry integration %s cannot be read: %s", iid, exc.title)
                    missing.append(iid)
                    continue
                username, _, password = (credential or "").partition(":")
                connections.append(
                    RegistryConnection(
                        integration_id=view.id,
                        url=view.config["url"],
                        ca_pem=view.config.get("ca_pem"),
                        username=username or None,
                        password=SecretStr(password) if password else None,
                    )
                )
        return Reply.success(RegistryConnections(connections=connections, missing=missing).model_dump(mode="json"))

    # --- notifications sent for the workflow service ----------------------------------------------------

    async def send_notification(self, req: SendNotification) -> Reply:
        """Send a message through a ``notification`` integration of the tenant, named by id or name.

        The webhook is reached through the egress guard like a connection test; a refusal or an unreachable
        webhook is :class:`~stella.integration.domain.NotificationFailed` (the caller may send again).
        """
        async with self._pool().acquire() as conn:
            view = await self._named(conn, req.tenant_id, req.integration)
            if view.type_id != domain.NOTIFICATION:
                raise domain.NotANotification(
                    f"integration {view.name!r} is of type {view.type_id!r}, not notification"
                )
            credential = await self._resolve(conn, req.tenant_id, view.credential_ref) if view.credential_ref else None
        body = domain.notification_body(view.config, view.name, "notification", req.message, req.fields)
        probe = await self.connectors.post_webhook(
            view.config["url"], body, token=credential, idempotency_key=req.idempotency_key
        )
        if probe.status is not HealthStatus.HEALTHY or probe.http_status is None:
            log.warning(
                "a notification was not delivered",
                extra={"tenant_id": str(req.tenant_id), "integration": view.name, "detail": probe.detail},
            )
            raise domain.NotificationFailed(f"integration {view.name!r}: {probe.detail}")
        sent = NotificationSent(integration_id=view.id, name=view.name, status=probe.http_status, detail=probe.detail)
        return Reply.success(sent.model_dump(mode="json"))

    async def _named(self, conn: asyncpg.Connection, tenant: UUID, ref: str) -> IntegrationView:
        """The tenant's integration of id or name ``ref``.

        Raises:
            IntegrationNotFound: none (another tenant's is not found either).
        """
        try:
            view = await repo.get_integration(conn, tenant, UUID(ref))
        except ValueError:
            view = await repo.get_integration_by_name(conn, tenant, ref)
        if view is None:
            raise domain.IntegrationNotFound(f"there is no integration {ref!r}")
        return view
