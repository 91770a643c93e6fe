"""Release service routes: message -> handler call. No logic here."""

from __future__ import annotations

from faststream.nats import NatsRouter

from stella.contracts import release as c
from stella.kit.broker import CommandRoutes, QueryRoutes
from stella.kit.service import ServiceRuntime
from stella.release.handlers import Handlers


def register(runtime: ServiceRuntime, router: NatsRouter, handlers: Handlers) -> None:
    """Attach the release commands and queries to ``router``."""
    commands = CommandRoutes(c.CONTEXT, runtime.name)
    commands.on(c.CREATE_COMPONENT, c.CreateComponent, handlers.create_component)
    commands.on(c.UPDATE_COMPONENT, c.UpdateComponent, handlers.update_component)
    commands.on(c.DELETE_COMPONENT, c.DeleteComponent, handlers.delete_component)
    commands.on(c.REGISTER_VERSION, c.RegisterVersion, handlers.register_version)
    commands.on(c.SYNC_VERSIONS, c.SyncVersions, handlers.sync_versions)
    commands.on(c.CREATE_RELEASE, c.CreateRelease, handlers.create_release)
    commands.on(c.UPDATE_RELEASE, c.UpdateRelease, handlers.update_release)
    commands.on(c.MARK_RELEASE_READY, c.MarkReleaseReady, handlers.mark_release_ready)
    commands.on(c.DEPRECATE_RELEASE, c.DeprecateRelease, handlers.deprecate_release)
    commands.attach(router, runtime)

    queries = QueryRoutes(c.CONTEXT, runtime.name)
    queries.on(c.GET_COMPONENT, c.GetComponent, handlers.get_component)
    queries.on(c.LIST_COMPONENTS, c.ListComponents, handlers.list_components)
    queries.on(c.LIST_VERSIONS, c.ListVersions, handlers.list_versions)
    queries.on(c.GET_RELEASE, c.GetRelease, handlers.get_release)
    queries.on(c.LIST_RELEASES, c.ListReleases, handlers.list_releases)
    queries.attach(router, runtime)
