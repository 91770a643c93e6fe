"""Test support: a real Postgres, a real NATS and a real OCI registry, isolated per test, and service callers.

The fixtures live in :mod:`stella.testing.plugin`; the helpers they use are importable from here.
"""

from stella.testing.databases import (
    DatabaseFactory,
    MigrationSet,
    discover_migration_sets,
    dsn_with_database,
    find_workspace_root,
)
from stella.testing.messaging import (
    MessageCollector,
    NatsNamespace,
    collect_messages,
    unique_token,
    wait_for_messages,
)
from stella.testing.registry import (
    LocalRegistry,
    RegistryError,
    busybox_files,
    fetch_manifest,
    push_image,
)
from stella.testing.services import TenantCaller, delete_namespace_streams, service_client

__all__ = [
    "DatabaseFactory",
    "LocalRegistry",
    "MessageCollector",
    "MigrationSet",
    "NatsNamespace",
    "RegistryError",
    "TenantCaller",
    "busybox_files",
    "collect_messages",
    "delete_namespace_streams",
    "discover_migration_sets",
    "dsn_with_database",
    "fetch_manifest",
    "find_workspace_root",
    "push_image",
    "service_client",
    "unique_token",
    "wait_for_messages",
]
