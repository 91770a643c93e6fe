"""Integration service routes: message -> handler call. No logic here."""

from __future__ import annotations

from faststream.nats import NatsRouter

from stella.contracts import integration as c
from stella.integration.handlers import Handlers
from stella.integration.plugin_handlers import PluginHandlers
from stella.kit.broker import CommandRoutes, QueryRoutes
from stella.kit.service import ServiceRuntime


def register(runtime: ServiceRuntime, router: NatsRouter, handlers: Handlers, plugins: PluginHandlers) -> None:
    """Attach the integration commands, requests and queries to ``router``."""
    commands = CommandRoutes(c.CONTEXT, runtime.name)
    commands.on(c.CREATE_INTEGRATION, c.CreateIntegration, handlers.create_integration)
    commands.on(c.UPDATE_INTEGRATION, c.UpdateIntegration, handlers.update_integration)
    commands.on(c.DELETE_INTEGRATION, c.DeleteIntegration, handlers.delete_integration)
    commands.on(c.TEST_INTEGRATION, c.TestIntegration, handlers.test_integration)
    commands.on(c.DELETE_SECRET, c.DeleteSecret, handlers.delete_secret)
    commands.on(c.INSTALL_PLUGIN, c.InstallPlugin, plugins.install_plugin)
    commands.on(c.CREATE_PLUGIN_INSTANCE, c.CreatePluginInstance, plugins.create_plugin_instance)
    commands.on(c.UPDATE_PLUGIN_INSTANCE, c.UpdatePluginInstance, plugins.update_plugin_instance)
    commands.on(c.DELETE_PLUGIN_INSTANCE, c.DeletePluginInstance, plugins.delete_plugin_instance)
    commands.attach(router, runtime)

    queries = QueryRoutes(c.CONTEXT, runtime.name)
    queries.on(c.STORE_SECRET, c.StoreSecret, handlers.store_secret)
    queries.on(c.LIST_SECRETS, c.ListSecrets, handlers.list_secrets)
    queries.on(c.LIST_INTEGRATION_TYPES, c.ListIntegrationTypes, handlers.list_integration_types)
    queries.on(c.GET_INTEGRATION, c.GetIntegration, handlers.get_integration)
    queries.on(c.LIST_INTEGRATIONS, c.ListIntegrations, handlers.list_integrations)
    queries.on(c.GET_REGISTRY_CONNECTION, c.GetRegistryConnection, handlers.get_registry_connection)
    queries.on(c.GET_REGISTRY_CONNECTIONS, c.GetRegistryConnections, handlers.get_registry_connections)
    queries.on(c.SEND_NOTIFICATION, c.SendNotification, handlers.send_notification)
    queries.on(c.GET_PLUGIN, c.GetPlugin, plugins.get_plugin)
    queries.on(c.LIST_PLUGINS, c.ListPlugins, plugins.list_plugins)
    queries.on(c.GET_PLUGIN_INSTANCE, c.GetPluginInstance, plugins.get_plugin_instance)
    queries.on(c.LIST_PLUGIN_INSTANCES, c.ListPluginInstances, plugins.list_plugin_instances)
    queries.on(c.RESOLVE_PLUGINS, c.ResolvePlugins, plugins.resolve_plugins)
    queries.attach(router, runtime)
