"""Test support: a real Postgres, a real NATS and a real OCI registry, isolated per test.

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

__all__ = [
    "DatabaseFactory",
    "LocalRegistry",
    "MessageCollector",
    "MigrationSet",
    "NatsNamespace",
    "RegistryError",
    "busybox_files",
    "collect_messages",
    "discover_migration_sets",
    "dsn_with_database",
    "fetch_manifest",
    "find_workspace_root",
    "push_image",
    "unique_token",
    "wait_for_messages",
]
