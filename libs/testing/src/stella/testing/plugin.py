"""Pytest plugin: real Postgres, real NATS and a real OCI registry for tests.

Loaded for the whole workspace with ``-p stella.testing.plugin``. Fixtures:

Session scope
    ``postgres_admin_dsn``  superuser DSN of the session's Postgres (see :mod:`stella.testing.servers`)
    ``nats_url``            URL of the session's NATS with JetStream
    ``database_factory``    the :class:`~stella.testing.databases.DatabaseFactory` behind ``make_database``

Function scope
    ``unique_id``           a short random token for names in this test
    ``make_database``       ``await make_database([(schema, dir), ...]) -> dsn``: fresh databases, dropped after
    ``fresh_database``      DSN of a fresh database holding every service's migrations
    ``nats``                a connected nats-py client, closed after the test
    ``jetstream``           that client's JetStream context
    ``nats_namespace``      a :class:`~stella.testing.messaging.NatsNamespace`; its streams are deleted after
    ``stella_namespace``    a namespace for services' ``nats_namespace`` setting; its streams and buckets are
                            deleted after (see :func:`~stella.testing.services.delete_namespace_streams`)
    ``oci_registry``        an anonymous :class:`~stella.testing.registry.LocalRegistry` shared by the session
    ``oci_registry_with_auth``  the same behind basic authentication (see ``.credentials``)
    ``make_oci_registry``   ``make_oci_registry(auth=False)``: a registry of the test's own, to stop and restart
    ``docker_janitor``      a :class:`~stella.testing.docker.DockerJanitor`: what the test registers is removed after
    ``tampering_registry``  a :class:`~stella.testing.tampering.TamperingRegistry` in front of ``oci_registry``

Session scope, Docker
    ``docker_engine``       the :class:`~stella.testing.docker.DockerEngine` of ``DOCKER_HOST`` or the default socket
    ``app_images``         :class:`~stella.testing.images.AppImages` (v1, v2, broken) pushed to ``oci_registry``;
                            every image the session pulled from that registry is removed from the engine after

Registry fixtures skip the test when the ``docker-registry`` executable is not installed; Docker fixtures
skip it when no engine answers (or busybox-static is missing), and fail it instead when
``STELLA_TEST_REQUIRE_DOCKER=1``.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import nats as nats_py
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.js import JetStreamContext

from stella.kit.naming import Names
from stella.testing.databases import DatabaseFactory, discover_migration_sets
from stella.testing.docker import (
    DockerEngine,
    DockerJanitor,
    DockerUnavailableError,
    docker_required,
    find_docker_engine,
)
from stella.testing.images import AppImages, push_app_images
from stella.testing.messaging import NatsNamespace, unique_token
from stella.testing.registry import LocalRegistry, busybox_files, find_registry_binary
from stella.testing.servers import ProvidedServer, ServerUnavailableError, provide_nats, provide_postgres
from stella.testing.services import delete_namespace_streams
from stella.testing.tampering import TamperingRegistry

MakeDatabase = Callable[[Sequence[tuple[str, Path]]], Awaitable[str]]
"""``await make_database(migration_sets)`` returns the DSN of a fresh database."""

MakeRegistry = Callable[..., LocalRegistry]
"""``make_oci_registry(auth=False)`` returns a started registry owned by the test."""

_REGISTRY_USER = "stella"


def _provide(provider: Callable[[], ProvidedServer]) -> Iterator[str]:
    try:
        server = provider()
    except ServerUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server.url
    finally:
        server.release()


@pytest.fixture(scope="session")
def postgres_admin_dsn() -> Iterator[str]:
    """Superuser DSN of the session's Postgres: configured, container or embedded, in that order."""
    yield from _provide(provide_postgres)


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """URL of the session's NATS with JetStream: configured, container or embedded, in that order."""
    yield from _provide(provide_nats)


@pytest.fixture
def unique_id() -> str:
    """A short random token to make names (tenants, subjects, repositories) unique to this test."""
    return unique_token()


@pytest.fixture(scope="session")
def database_factory(postgres_admin_dsn: str) -> DatabaseFactory:
    """The session's database factory; templates built through it are reused by every test."""
    return DatabaseFactory(postgres_admin_dsn)


@pytest_asyncio.fixture
async def make_database(database_factory: DatabaseFactory) -> AsyncIterator[MakeDatabase]:
    """Create fresh databases from migration templates; all are dropped when the test ends.

    ``await make_database([("release", path_to_migrations)])`` returns the DSN of a new database in which
    those migrations have been applied; ``await make_database([])`` gives an empty database.
    """
    # Templates are shared with the session factory so each is built once per session.
    created = database_factory.scoped()

    async def make(migration_sets: Sequence[tuple[str, Path]] = ()) -> str:
        return await created.create(migration_sets)

    try:
        yield make
    finally:
        await created.drop_created()


@pytest_asyncio.fixture
async def fresh_database(make_database: MakeDatabase) -> str:
    """DSN of a fresh database holding the schemas of every service in the workspace."""
    return await make_database(discover_migration_sets())


@pytest_asyncio.fixture(name="nats")
async def nats_client(nats_url: str, unique_id: str) -> AsyncIterator[Client]:
    """A nats-py client connected to the session's NATS, closed after the test."""
    client = await nats_py.connect(nats_url, name=f"test-{unique_id}", connect_timeout=5, allow_reconnect=False)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def jetstream(nats: Client) -> JetStreamContext:
    """The JetStream context of the test's client."""
    return nats.jetstream()


@pytest_asyncio.fixture
async def nats_namespace(nats: Client, unique_id: str) -> AsyncIterator[NatsNamespace]:
    """Subjects and stream names unique to this test; streams it creates are deleted afterwards."""
    namespace = NatsNamespace(nats, unique_id)
    try:
        yield namespace
    finally:
        await namespace.cleanup()


@pytest_asyncio.fixture
async def stella_namespace(nats: Client, unique_id: str) -> AsyncIterator[str]:
    """A Stella NATS namespace of this test's own, for the ``nats_namespace`` setting of the services it runs.

    Once the test is over (and the fixtures using the namespace have stopped their services), the
    namespace's streams, with their consumers, and its object stores and key-value buckets are deleted.
    """
    names = Names(f"t{unique_id}")
    try:
        yield names.namespace
    finally:
        await delete_namespace_streams(nats.jetstream(), names)


def _require_registry_binary() -> Path:
    binary = find_registry_binary()
    if binary is None:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    return binary


@pytest.fixture(scope="session")
def _oci_registry_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    registry = LocalRegistry(tmp_path_factory.mktemp("oci-registry"), binary=_require_registry_binary())
    try:
        yield registry.start()
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def _oci_registry_with_auth_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    registry = LocalRegistry(
        tmp_path_factory.mktemp("oci-registry-auth"),
        users={_REGISTRY_USER: secrets.token_urlsafe(16)},
        binary=_require_registry_binary(),
    )
    try:
        yield registry.start()
    finally:
        registry.stop()


@pytest.fixture
def oci_registry(_oci_registry_session: LocalRegistry) -> LocalRegistry:
    """An anonymous OCI registry shared by the session; use unique repository names per test.

    Do not stop it: use ``make_oci_registry`` for a registry the test may stop. Should a test stop it
    anyway, the next test gets it running again.
    """
    return _oci_registry_session.start()


@pytest.fixture
def oci_registry_with_auth(_oci_registry_with_auth_session: LocalRegistry) -> LocalRegistry:
    """An OCI registry requiring basic authentication with ``.credentials``; shared by the session."""
    return _oci_registry_with_auth_session.start()


@pytest.fixture
def make_oci_registry(tmp_path: Path) -> Iterator[MakeRegistry]:
    """Start registries owned by this test (``make_oci_registry(auth=True)`` for basic authentication).

    The test may stop and restart them; all are stopped when it ends.
    """
    binary = _require_registry_binary()
    started: list[LocalRegistry] = []

    def make(*, auth: bool = False) -> LocalRegistry:
        users = {_REGISTRY_USER: secrets.token_urlsafe(16)} if auth else None
        registry = LocalRegistry(tmp_path / f"registry-{len(started)}", users=users, binary=binary)
        started.append(registry)
        return registry.start()

    try:
        yield make
    finally:
        for registry in started:
            registry.stop()


def _unavailable(reason: str) -> None:
    if docker_required():
        pytest.fail(f"{reason} (and STELLA_TEST_REQUIRE_DOCKER is set)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """The Docker engine of ``DOCKER_HOST`` or the default socket; skips the test when none answers."""
    try:
        engine = find_docker_engine()
    except DockerUnavailableError as exc:
        _unavailable(str(exc))
        raise  # unreachable: skip and fail raise
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture
def docker_janitor(docker_engine: DockerEngine) -> Iterator[DockerJanitor]:
    """Register containers, labels, compose projects, networks and images; they are removed after the test."""
    janitor = DockerJanitor(docker_engine.client)
    try:
        yield janitor
    finally:
        problems = janitor.clean()
        if problems:
            pytest.fail("Docker clean-up failed: " + "; ".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def app_images(docker_engine: DockerEngine, _oci_registry_session: LocalRegistry) -> Iterator[AppImages]:
    """Runnable v1, v2 and broken-health images with real, distinct digests, unique to this session."""
    if busybox_files() is None:
        _unavailable("busybox-static is not installed (apt-get install busybox-static)")
    registry = _oci_registry_session.start()
    marker = unique_token()
    images = push_app_images(registry, f"stella-test/app-{marker}", marker)
    janitor = DockerJanitor(docker_engine.client)
    janitor.add_registry(registry.address)
    try:
        yield images
    finally:
        janitor.clean()


@pytest.fixture
def tampering_registry(oci_registry: LocalRegistry, docker_janitor: DockerJanitor) -> Iterator[TamperingRegistry]:
    """A proxy in front of ``oci_registry`` that serves swapped manifests; images pulled through it are removed."""
    with TamperingRegistry(oci_registry) as proxy:
        docker_janitor.add_registry(proxy.address)
        yield proxy
