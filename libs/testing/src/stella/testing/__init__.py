"""Test support: a real Postgres, NATS, OCI registry and Docker engine, isolated per test, and service callers.

The fixtures live in :mod:`stella.testing.plugin`; the helpers they use are importable from here.
"""

from stella.testing.databases import (
    DatabaseFactory,
    MigrationSet,
    discover_migration_sets,
    dsn_with_database,
    find_workspace_root,
    parameter_types,
)
from stella.testing.docker import DockerEngine, DockerJanitor, DockerUnavailableError, find_docker_engine
from stella.testing.images import AppImage, AppImages, push_app_image, push_app_images
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
from stella.testing.tampering import TamperingRegistry

__all__ = [
    "AppImage",
    "AppImages",
    "DatabaseFactory",
    "DockerEngine",
    "DockerJanitor",
    "DockerUnavailableError",
    "LocalRegistry",
    "MessageCollector",
    "MigrationSet",
    "NatsNamespace",
    "RegistryError",
    "TamperingRegistry",
    "TenantCaller",
    "busybox_files",
    "collect_messages",
    "delete_namespace_streams",
    "discover_migration_sets",
    "dsn_with_database",
    "fetch_manifest",
    "find_docker_engine",
    "find_workspace_root",
    "parameter_types",
    "push_app_image",
    "push_app_images",
    "push_image",
    "service_client",
    "unique_token",
    "wait_for_messages",
]
