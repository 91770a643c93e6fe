"""Integration service routes: message -> handler call. No logic here."""

from __future__ import annotations

from faststream.nats import NatsRouter

from stella.contracts import integration as c
from stella.integration.handlers import Handlers
from stella.kit.broker import CommandRoutes, QueryRoutes
from stella.kit.service import ServiceRuntime


def register(runtime: ServiceRuntime, router: NatsRouter, handlers: Handlers) -> None:
    """Attach the integration commands, requests and queries to ``router``."""
    commands = CommandRoutes(c.CONTEXT, runtime.name)
    commands.on(c.CREATE_INTEGRATION, c.CreateIntegration, handlers.create_integration)
    commands.on(c.UPDATE_INTEGRATION, c.UpdateIntegration, handlers.update_integration)
    commands.on(c.DELETE_INTEGRATION, c.DeleteIntegration, handlers.delete_integration)
    commands.on(c.TEST_INTEGRATION, c.TestIntegration, handlers.test_integration)
    commands.on(c.DELETE_SECRET, c.DeleteSecret, handlers.delete_secret)
    commands.attach(router, runtime)

    queries = QueryRoutes(c.CONTEXT, runtime.name)
    queries.on(c.STORE_SECRET, c.StoreSecret, handlers.store_secret)
    queries.on(c.LIST_SECRETS, c.ListSecrets, handlers.list_secrets)
    queries.on(c.LIST_INTEGRATION_TYPES, c.ListIntegrationTypes, handlers.list_integration_types)
    queries.on(c.GET_INTEGRATION, c.GetIntegration, handlers.get_integration)
    queries.on(c.LIST_INTEGRATIONS, c.ListIntegrations, handlers.list_integrations)
    queries.on(c.GET_REGISTRY_CONNECTION, c.GetRegistryConnection, handlers.get_registry_connection)
    queries.on(c.SEND_NOTIFICATION, c.SendNotification, handlers.send_notification)
    queries.attach(router, runtime)
