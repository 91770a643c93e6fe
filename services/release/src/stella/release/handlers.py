"""Use cases of the release service: load -> domain -> save + outbox, in one transaction.

Network work (registry calls) happens before the transaction opens, so no connection is held while a
registry answers; the transaction then re-reads what it changes.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import datetime
from uuid import UUID, uuid4

import asyncpg

from stella.contracts.envelope import Page, Reply, utcnow
from stella.contracts.release import (
    COMPONENT_CREATED,
    COMPONENT_DELETED,
    COMPONENT_UPDATED,
    RELEASE_CREATED,
    RELEASE_DEPRECATED,
    RELEASE_READY,
    VERSION_RESOLVED,
    VERSION_UPDATED,
    ComponentCreated,
    ComponentDeleted,
    ComponentUpdated,
    ComponentView,
    CreateComponent,
    CreateRelease,
    DeleteComponent,
    DeprecateRelease,
    GetComponent,
    GetRelease,
    ListComponents,
    ListReleases,
    ListVersions,
    MarkReleaseReady,
    RegisterVersion,
    ReleaseComponent,
    ReleaseComponentSpec,
    ReleaseCreated,
    ReleaseDeprecated,
    ReleaseReady,
    ReleaseStatus,
    SyncResult,
    SyncVersions,
    UpdateComponent,
    UpdateRelease,
    VersionResolved,
    VersionUpdated,
    VersionView,
)
from stella.contracts.validation import SEMVER_PATTERN
from stella.kit.broker import CommandProcessor
from stella.kit.errors import ServiceError, error_detail
from stella.kit.outbox import add_events
from stella.release import domain, repo
from stella.release.credentials import CredentialPolicy
from stella.release.integrations import RegistryIntegrations
from stella.release.registry import Access, RegistryClient

_SEMVER = re.compile(SEMVER_PATTERN)


def _semver_of(tag: str) -> str | None:
    return tag if _SEMVER.match(tag) else None


def _channel_for(semver: str | None, default_channel: str) -> str:
    # A pre-release (1.2.0-rc.1) belongs to the beta channel; everything else to the component's default.
    return "beta" if semver and "-" in semver.split("+")[0] else default_channel


class Handlers:
    """The release service's command and query handlers."""

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        commands: CommandProcessor,
        registry: RegistryClient,
        *,
        credentials: CredentialPolicy | None = None,
        integrations: RegistryIntegrations | None = None,
        max_tags_per_sync: int = 5000,
        clock: Callable[[], datetime] = utcnow,
        new_id: Callable[[], UUID] = uuid4,
    ) -> None:
        self._pool = pool
        self.commands = commands
        self.registry = registry
        self.credentials = credentials or CredentialPolicy()
        self.integrations = integrations
        self.max_tags_per_sync = max_tags_per_sync
        self.clock = clock
        self.new_id = new_id

    async def _registry_credentials(
        self,
        tenant_id: UUID,
        component: ComponentView | None,
        *,
        integration_id: UUID | None = None,
        repository: str | None = None,
        credential_ref: str | None = None,
    ) -> Access | None:
        """How a component's registry is read: through its registry integration (asked of the integration
        service: credential, CA, URL), else, deprecated, through its host credential reference."""
        if component is not None:
            integration_id, repository = component.registry_integration_id, component.image_repository
            credential_ref = component.registry_credential_ref
        if integration_id is not None:
            if self.integrations is None:
                raise domain.RegistryIntegrationsUnavailable("registry integrations are not configured")
            assert repository is not None
            return await self.integrations.access(tenant_id, integration_id, repository)
        legacy = self.credentials.resolve(tenant_id, credential_ref)
        return Access(credentials=legacy) if legacy is not None else None

    # --- components -------------------------------------------------------------------------------------

    async def create_component(self, cmd: CreateComponent) -> Reply:
        """Create a component under a unique name."""
        if cmd.registry_integration_id is not None:
            if (stored := await self.commands.seen(cmd)) is not None:
                return stored
            try:
                await self._registry_credentials(
                    cmd.tenant_id, None, integration_id=cmd.registry_integration_id, repository=cmd.image_repository
                )
            except ServiceError as exc:
                return Reply.failure(error_detail(exc))

        async def execute(conn: asyncpg.Connection) -> object:
            _refuse_new_credential_ref(cmd.registry_credential_ref)
            self.registry.check_repository(cmd.image_repository)
            fields = cmd.model_dump(
                include={
                    "name",
                    "image_repository",
                    "versioning_strategy",
                    "default_channel",
                    "registry_credential_ref",
                    "registry_integration_id",
                }
            )
            fields["display_name"] = cmd.display_name or cmd.name
            view = await repo.insert_component(conn, cmd.tenant_id, self.new_id(), fields, self.clock())
            if view is None:
                raise domain.DuplicateName(f"a component named {cmd.name!r} already exists")
            await add_events(conn, [(COMPONENT_CREATED, cmd.caused(ComponentCreated, component=view))])
            return view.model_dump(mode="json")

        return await self.commands.run(cmd, execute)

    async def update_component(self, cmd: UpdateComponent) -> Reply:
        """Change a component's mutable fields."""
        if cmd.registry_integration_id is not None:
            if (stored := await self.commands.seen(cmd)) is not None:
                return stored
            async with self._pool().acquire() as conn:
                existing = await repo.get_component(conn, cmd.tenant_id, cmd.component_id)
            if existing is not None:
                try:
                    await self._registry_credentials(
                        cmd.tenant_id,
                        None,
                        integration_id=cmd.registry_integration_id,
                        repository=cmd.image_repository or existing.image_repository,
                    )
                except ServiceError as exc:
                    return Reply.failure(error_detail(exc))

        async def execute(conn: asyncpg.Connection) -> object:
            current = await repo.get_component(conn, cmd.tenant_id, cmd.component_id, lock=True)
            if current is None:
                raise domain.ComponentNotFound(f"component {cmd.component_id} does not exist")
            _refuse_new_credential_ref(cmd.registry_credential_ref)
            if cmd.image_repository is not None:
                self.registry.check_repository(cmd.image_repository)
            changes = cmd.model_dump(
                include={
                    "display_name",
                    "image_repository",
                    "versioning_strategy",
                    "default_channel",
                    "registry_credential_ref",
                    "registry_integration_id",
                },
                exclude_none=True,
            )
            if cmd.clear_registry_credential_ref or cmd.registry_integration_id is not None:
                # Naming an integration moves the component off its deprecated reference.
                changes["registry_credential_ref"] = None
            if cmd.clear_registry_integration_id:
                changes["registry_integration_id"] = None
            updated = current.model_copy(update=changes)
            if updated == current:
                return current.model_dump(mode="json")
            view = await repo.update_component(conn, cmd.tenant_id, updated, self.clock())
            await add_events(conn, [(COMPONENT_UPDATED, cmd.caused(ComponentUpdated, component=view))])
            return view.model_dump(mode="json")

        return await self.commands.run(cmd, execute)

    async def delete_component(self, cmd: DeleteComponent) -> Reply:
        """Delete a component no release uses."""

        async def execute(conn: asyncpg.Connection) -> object:
            current = await repo.get_component(conn, cmd.tenant_id, cmd.component_id, lock=True)
            if current is None:
                raise domain.ComponentNotFound(f"component {cmd.component_id} does not exist")
            if await repo.component_in_use(conn, cmd.tenant_id, cmd.component_id):
                raise domain.ComponentInUse(f"component {current.name!r} is used by a release and cannot be deleted")
            await repo.delete_component(conn, cmd.tenant_id, cmd.component_id)
            await add_events(
                conn,
                [(COMPONENT_DELETED, cmd.caused(ComponentDeleted, component_id=current.id, name=current.name))],
            )
            return {"id": str(current.id), "deleted": True}

        return await self.commands.run(cmd, execute)

    # --- versions ---------------------------------------------------------------------------------------

    async def register_version(self, cmd: RegisterVersion) -> Reply:
        """Record or move one tag of a component's version map."""

        async def execute(conn: asyncpg.Connection) -> object:
            component = await repo.get_component(conn, cmd.tenant_id, cmd.component_id, lock=True)
            if component is None:
                raise domain.ComponentNotFound(f"component {cmd.component_id} does not exist")
            semver = cmd.semver or _semver_of(cmd.tag)
            channel = cmd.channel or _channel_for(semver, component.default_channel)
            views = await self._record_versions(
                conn, cmd, component, {cmd.tag: cmd.digest}, {cmd.tag: (semver, channel)}
            )
            return views[cmd.tag].model_dump(mode="json")

        return await self.commands.run(cmd, execute)

    async def sync_versions(self, cmd: SyncVersions) -> Reply:
        """Read every tag of the component's repository from its registry and record tag -> digest.

        All tags are resolved before anything is written: a registry that fails midway changes nothing.
        """
        if (stored := await self.commands.seen(cmd)) is not None:
            return stored
        async with self._pool().acquire() as conn:
            component = await repo.get_component(conn, cmd.tenant_id, cmd.component_id)
        if component is None:
            return Reply.failure(error_detail(domain.ComponentNotFound(f"component {cmd.component_id} does not exist")))
        try:
            creds = await self._registry_credentials(cmd.tenant_id, component)
            tags = await self.registry.list_tags(component.image_repository, creds, limit=self.max_tags_per_sync)
            digests = await self.registry.resolve_many(component.image_repository, tags, creds)
        except ServiceError as exc:
            return Reply.failure(error_detail(exc))

        async def execute(conn: asyncpg.Connection) -> object:
            locked = await repo.get_component(conn, cmd.tenant_id, cmd.component_id, lock=True)
            if locked is None:
                raise domain.ComponentNotFound(f"component {cmd.component_id} was deleted during the sync")
            labels = {t: (_semver_of(t), _channel_for(_semver_of(t), locked.default_channel)) for t in digests}
            known = await repo.versions_by_tag(conn, cmd.tenant_id, locked.id, list(digests))
            await self._record_versions(conn, cmd, locked, digests, labels, known=known)
            changes = [
                domain.classify_version(
                    domain.KnownVersion(k.digest, k.semver, k.channel) if (k := known.get(t)) else None, d, *labels[t]
                )
                for t, d in digests.items()
            ]
            return SyncResult(
                component_id=locked.id,
                tags_seen=len(tags),
                resolved=changes.count(domain.VersionChange.RESOLVED),
                updated=changes.count(domain.VersionChange.UPDATED),
                unchanged=changes.count(domain.VersionChange.UNCHANGED),
            ).model_dump(mode="json")

        return await self.commands.run(cmd, execute)

    async def _record_versions(
        self,
        conn: asyncpg.Connection,
        cmd: RegisterVersion | SyncVersions | CreateRelease | UpdateRelease,
        component: ComponentView,
        digests: dict[str, str],
        labels: dict[str, tuple[str | None, str]],
        *,
        known: dict[str, VersionView] | None = None,
    ) -> dict[str, VersionView]:
        """Upsert changed tags in one statement and emit version_resolved / version_updated for each."""
        if known is None:
            known = await repo.versions_by_tag(conn, cmd.tenant_id, component.id, list(digests))
        entries = []
        change_of: dict[str, domain.VersionChange] = {}
        for tag, digest in sorted(digests.items()):
            semver, channel = labels[tag]
            prior = known.get(tag)
            change = domain.classify_version(
                domain.KnownVersion(prior.digest, prior.semver, prior.channel) if prior else None,
                digest,
                semver,
                channel,
            )
            change_of[tag] = change
            if change is not domain.VersionChange.UNCHANGED:
                entries.append((self.new_id(), tag, digest, semver, channel))
        written = await repo.upsert_versions(conn, cmd.tenant_id, component.id, entries, self.clock())
        events: list[tuple[str, VersionResolved | VersionUpdated]] = []
        for view in written:
            if change_of[view.tag] is domain.VersionChange.RESOLVED:
                events.append((VERSION_RESOLVED, cmd.caused(VersionResolved, version=view)))
            else:
                events.append(
                    (VERSION_UPDATED, cmd.caused(VersionUpdated, version=view, previous_digest=known[view.tag].digest))
                )
        await add_events(conn, events)
        return {**known, **{v.tag: v for v in written}}

    # --- releases ---------------------------------------------------------------------------------------

    async def _resolve_from_registries(
        self, cmd: CreateRelease | UpdateRelease, specs: list[ReleaseComponentSpec]
    ) -> dict[tuple[str, str], str]:
        """Resolve tags of registry-backed components now, concurrently; keyed by (component ref, tag)."""
        async with self._pool().acquire() as conn:
            components = await repo.components_by_ref(conn, cmd.tenant_id, [s.component for s in specs])
        missing = sorted({s.component for s in specs if s.component not in components})
        if missing:
            raise domain.UnknownComponent(f"unknown component(s): {', '.join(missing)}")
        wanted = [
            (spec.component, spec.tag)
            for spec in specs
            if spec.tag is not None and domain.resolves_from_registry(components[spec.component].versioning_strategy)
        ]

        async def resolve(ref: str, tag: str) -> tuple[tuple[str, str], str]:
            component = components[ref]
            creds = await self._registry_credentials(cmd.tenant_id, component)
            return (ref, tag), await self.registry.resolve(component.image_repository, tag, creds)

        return dict(await asyncio.gather(*(resolve(ref, tag) for ref, tag in wanted)))

    async def _pin(
        self,
        conn: asyncpg.Connection,
        cmd: CreateRelease | UpdateRelease,
        specs: list[ReleaseComponentSpec],
        from_registry: dict[tuple[str, str], str],
    ) -> list[ReleaseComponent]:
        """Turn component specs into digest-pinned release components, recording registry resolutions."""
        components = await repo.components_by_ref(conn, cmd.tenant_id, [s.component for s in specs])
        missing = sorted({s.component for s in specs if s.component not in components})
        if missing:
            raise domain.UnknownComponent(f"unknown component(s): {', '.join(missing)}")
        if len({components[s.component].id for s in specs}) != len(specs):
            raise domain.UnknownComponent("a component appears twice in the release (by name and by id)")
        known = await repo.versions_by_pairs(
            conn, cmd.tenant_id, [(components[s.component].id, s.tag) for s in specs if s.tag is not None]
        )
        pinned: list[ReleaseComponent] = []
        for spec in specs:
            component = components[spec.component]
            semver: str | None = None
            if spec.tag is None:
                assert spec.digest is not None
                digest = spec.digest
            elif (registry_digest := from_registry.get((spec.component, spec.tag))) is not None:
                semver = _semver_of(spec.tag)
                labels = {spec.tag: (semver, _channel_for(semver, component.default_channel))}
                prior = known.get((component.id, spec.tag))
                await self._record_versions(
                    conn, cmd, component, {spec.tag: registry_digest}, labels, known={spec.tag: prior} if prior else {}
                )
                digest = registry_digest
            elif (entry := known.get((component.id, spec.tag))) is not None:
                digest, semver = entry.digest, entry.semver
            else:
                raise domain.UnknownTag(f"tag {spec.tag!r} of component {component.name!r} is not in its version map")
            pinned.append(
                ReleaseComponent(
                    component_id=component.id,
                    name=component.name,
                    image_repository=component.image_repository,
                    digest=digest,
                    tag=spec.tag,
                    semver=semver,
                    registry_integration_id=component.registry_integration_id,
                )
            )
        return sorted(pinned, key=lambda c: c.name)

    async def create_release(self, cmd: CreateRelease) -> Reply:
        """Create a draft release with every component pinned by digest."""
        if (stored := await self.commands.seen(cmd)) is not None:
            return stored
        try:
            from_registry = await self._resolve_from_registries(cmd, cmd.components)
        except ServiceError as exc:
            return Reply.failure(error_detail(exc))

        async def execute(conn: asyncpg.Connection) -> object:
            components = await self._pin(conn, cmd, cmd.components, from_registry)
            view = await repo.insert_release(
                conn,
                cmd.tenant_id,
                self.new_id(),
                cmd.name,
                cmd.display_name or cmd.name,
                components,
                cmd.source_ref,
                cmd.actor_id,
                self.clock(),
            )
            if view is None:
                raise domain.DuplicateName(f"a release named {cmd.name!r} already exists")
            await add_events(conn, [(RELEASE_CREATED, cmd.caused(ReleaseCreated, release=view))])
            return view.model_dump(mode="json")

        return await self.commands.run(cmd, execute)

    async def update_release(self, cmd: UpdateRelease) -> Reply:
        """Change a draft release; a ready one is immutable."""
        if (stored := await self.commands.seen(cmd)) is not None:
            return stored
        try:
            from_registry = await self._resolve_from_registries(cmd, cmd.components or [])
        except ServiceError as exc:
            return Reply.failure(error_detail(exc))

        async def execute(conn: asyncpg.Connection) -> object:
            current = await repo.get_release(conn, cmd.tenant_id, cmd.release_id, lock=True)
            if current is None:
                raise domain.ReleaseNotFound(f"release {cmd.release_id} does not exist")
            domain.ensure_editable(current.name, current.status)
            components = (
                await self._pin(conn, cmd, cmd.components, from_registry) if cmd.components else current.components
            )
            view = await repo.update_release(
                conn,
                cmd.tenant_id,
                current.id,
                cmd.display_name or current.display_name,
                components,
                cmd.source_ref if cmd.source_ref is not None else current.source_ref,
                self.clock(),
                relink=cmd.components is not None,
            )
            return view.model_dump(mode="json")

        return await self.commands.run(cmd, execute)

    async def _set_status(
        self, cmd: MarkReleaseReady | DeprecateRelease, target: ReleaseStatus, reason: str | None = None
    ) -> Reply:
        async def execute(conn: asyncpg.Connection) -> object:
            current = await repo.get_release(conn, cmd.tenant_id, cmd.release_id, lock=True)
            if current is None:
                raise domain.ReleaseNotFound(f"release {cmd.release_id} does not exist")
            domain.transition(current.name, current.status, target)
            view = await repo.set_release_status(conn, cmd.tenant_id, current.id, target, self.clock(), reason)
            if target is ReleaseStatus.READY:
                await add_events(conn, [(RELEASE_READY, cmd.caused(ReleaseReady, release=view))])
            else:
                await add_events(conn, [(RELEASE_DEPRECATED, cmd.caused(ReleaseDeprecated, release=view))])
            return view.model_dump(mode="json")

        return await self.commands.run(cmd, execute)

    async def mark_release_ready(self, cmd: MarkReleaseReady) -> Reply:
        """Freeze a draft release."""
        return await self._set_status(cmd, ReleaseStatus.READY)

    async def deprecate_release(self, cmd: DeprecateRelease) -> Reply:
        """Deprecate a release."""
        return await self._set_status(cmd, ReleaseStatus.DEPRECATED, cmd.reason)

    # --- queries ----------------------------------------------------------------------------------------

    async def get_component(self, q: GetComponent) -> Reply:
        """One component."""
        async with self._pool().acquire() as conn:
            view = await repo.get_component(conn, q.tenant_id, q.component_id)
        if view is None:
            raise domain.ComponentNotFound(f"component {q.component_id} does not exist")
        return Reply.success(view.model_dump(mode="json"))

    async def list_components(self, q: ListComponents) -> Reply:
        """A page of components."""
        async with self._pool().acquire() as conn:
            items, token = await repo.list_components(
                conn, q.tenant_id, q.name_prefix, q.page.page_size, q.page.page_token
            )
        return Reply.success(Page(items=[i.model_dump(mode="json") for i in items], next_page_token=token).model_dump())

    async def list_versions(self, q: ListVersions) -> Reply:
        """A page of a component's versions."""
        async with self._pool().acquire() as conn:
            if await repo.get_component(conn, q.tenant_id, q.component_id) is None:
                raise domain.ComponentNotFound(f"component {q.component_id} does not exist")
            items, token = await repo.list_versions(
                conn, q.tenant_id, q.component_id, q.channel, q.page.page_size, q.page.page_token
            )
        return Reply.success(Page(items=[i.model_dump(mode="json") for i in items], next_page_token=token).model_dump())

    async def get_release(self, q: GetRelease) -> Reply:
        """One release."""
        async with self._pool().acquire() as conn:
            view = await repo.get_release(conn, q.tenant_id, q.release_id)
        if view is None:
            raise domain.ReleaseNotFound(f"release {q.release_id} does not exist")
        return Reply.success(view.model_dump(mode="json"))

    async def list_releases(self, q: ListReleases) -> Reply:
        """A page of releases."""
        async with self._pool().acquire() as conn:
            items, token = await repo.list_releases(
                conn,
                q.tenant_id,
                q.status.value if q.status else None,
                q.name_prefix,
                q.component_id,
                q.page.page_size,
                q.page.page_token,
            )
        return Reply.success(Page(items=[i.model_dump(mode="json") for i in items], next_page_token=token).model_dump())


def _refuse_new_credential_ref(ref: str | None) -> None:
    """Refuse naming a new ``registry_credential_ref`` (clearing one is allowed).

    Raises:
        RegistryCredentialRefDeprecated: ``ref`` is set.
    """
    if ref is not None:
        raise domain.RegistryCredentialRefDeprecated(
            "registry_credential_ref is deprecated and no new one is accepted: create a registry integration "
            "(POST /api/v1/integrations, type registry, its credential in the secret store, a vault or an "
            "operator-allowed env:/file: reference) and name it in registry_integration_id"
        )
