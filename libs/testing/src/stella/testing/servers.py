"""Find or start the real Postgres and NATS servers a test session uses.

For each server the first source that works wins:

1. ``configured``: the server named by ``STELLA_DATABASE_URL`` / ``STELLA_NATS_URL`` (or the defaults
   ``postgresql://postgres@127.0.0.1:5432/postgres`` and ``nats://127.0.0.1:4222``) when it answers;
2. ``container``: a throwaway container through testcontainers when a Docker engine answers;
3. ``embedded``: the embedded servers of :mod:`stella.kit.embedded`, in a temporary directory.

``STELLA_TEST_SERVERS`` pins one source (``configured``, ``container`` or ``embedded``); the default,
``auto``, tries them in the order above. When a server URL is set explicitly in the environment and does
not answer, the session fails instead of silently testing against another server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import asyncpg

from stella.kit.embedded import EmbeddedNats, EmbeddedPostgres, probe_nats

DEFAULT_DATABASE_URL: Final[str] = "postgresql://postgres@127.0.0.1:5432/postgres"
"""The Postgres a developer machine runs, used when ``STELLA_DATABASE_URL`` is unset."""

DEFAULT_NATS_URL: Final[str] = "nats://127.0.0.1:4222"
"""The NATS a developer machine runs, used when ``STELLA_NATS_URL`` is unset."""

POSTGRES_IMAGE: Final[str] = os.environ.get("STELLA_TEST_POSTGRES_IMAGE", "postgres:18-alpine")
"""Container image for the ``container`` source (override with ``STELLA_TEST_POSTGRES_IMAGE``)."""

NATS_IMAGE: Final[str] = os.environ.get("STELLA_TEST_NATS_IMAGE", "nats:2.11-alpine")
"""Container image for the ``container`` source (override with ``STELLA_TEST_NATS_IMAGE``)."""

Source = Literal["configured", "container", "embedded"]
_SOURCES: Final[tuple[Source, ...]] = ("configured", "container", "embedded")
_PROBE_TIMEOUT = 3.0
_CONTAINER_READY_TIMEOUT = 60.0


class ServerUnavailableError(RuntimeError):
    """No source could provide the requested server."""


@dataclass
class ProvidedServer:
    """A server a test session uses, and how to release it at the end of the session."""

    url: str
    """Where clients connect: a Postgres superuser DSN or a NATS URL."""
    source: Source
    """Which source provided it."""
    _release: Callable[[], None] | None = field(default=None, repr=False)

    def release(self) -> None:
        """Stop the server when this session started it; a configured server is left alone."""
        release, self._release = self._release, None
        if release is not None:
            release()


def _run_coroutine(coroutine: Coroutine[Any, Any, bool]) -> bool:
    # A worker thread gets its own event loop, so probing works whether or not a loop runs here.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _postgres_answers_async(dsn: str, timeout: float) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=timeout)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    try:
        return await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


def postgres_answers(dsn: str, timeout: float = _PROBE_TIMEOUT) -> bool:
    """Tell whether a Postgres server accepts ``dsn`` and runs a query.

    Args:
        dsn: A ``postgresql://`` URL.
        timeout: Seconds allowed for connecting.

    Returns:
        True when a connection was made and ``SELECT 1`` answered.
    """
    return _run_coroutine(_postgres_answers_async(dsn, timeout))


def nats_answers(url: str, timeout: float = _PROBE_TIMEOUT) -> bool:
    """Tell whether a NATS server with JetStream answers at ``url``.

    Args:
        url: A ``nats://host:port`` URL.
        timeout: Seconds allowed for connecting.

    Returns:
        True when a NATS server with JetStream enabled greeted.
    """
    parts = urlsplit(url)
    return probe_nats(parts.hostname or "127.0.0.1", parts.port or 4222, timeout=timeout)


def docker_answers() -> bool:
    """Tell whether a Docker engine answers (the precondition of the ``container`` source)."""
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=int(_PROBE_TIMEOUT))
    except Exception:  # docker raises DockerException or lower-level errors for a missing engine
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def _sources() -> tuple[Source, ...]:
    wanted = os.environ.get("STELLA_TEST_SERVERS", "auto").strip().lower()
    if wanted in ("", "auto"):
        return _SOURCES
    if wanted not in _SOURCES:
        raise ServerUnavailableError(
            f"STELLA_TEST_SERVERS={wanted!r} is not one of auto, configured, container, embedded"
        )
    return (wanted,)


def _start_container(image: str, port: int, configure: Callable[[Any], Any]) -> tuple[Any, str, int]:
    # Ryuk (the reaper sidecar) needs an image pull and a socket mount that many CI engines forbid;
    # containers are removed by ProvidedServer.release instead. An explicit setting still wins.
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
    from testcontainers.core.container import DockerContainer

    container = configure(DockerContainer(image).with_exposed_ports(port))
    container.start()
    return container, container.get_container_host_ip(), int(container.get_exposed_port(port))


def _wait_for(ready: Callable[[], bool], what: str) -> None:
    # A container's port is published before the server inside listens; there is no event to await.
    deadline = time.monotonic() + _CONTAINER_READY_TIMEOUT
    while not ready():
        if time.monotonic() > deadline:
            raise ServerUnavailableError(f"{what} did not become ready in {_CONTAINER_READY_TIMEOUT:.0f}s")
        time.sleep(0.2)


def provide_postgres() -> ProvidedServer:
    """Find or start a Postgres server for a test session.

    Returns:
        The server; its :attr:`ProvidedServer.url` is a superuser DSN of the ``postgres`` database.

    Raises:
        ServerUnavailableError: when an explicitly configured server does not answer, or no source works.
    """
    explicit = os.environ.get("STELLA_DATABASE_URL")
    dsn = explicit or DEFAULT_DATABASE_URL
    failures: list[str] = []
    for source in _sources():
        if source == "configured":
            if postgres_answers(dsn):
                return ProvidedServer(dsn, "configured")
            if explicit:
                raise ServerUnavailableError(f"STELLA_DATABASE_URL={explicit} does not answer")
            failures.append(f"nothing answers at {dsn}")
        elif source == "container":
            if not docker_answers():
                failures.append("no Docker engine answers")
                continue
            container, host, port = _start_container(
                POSTGRES_IMAGE, 5432, lambda c: c.with_env("POSTGRES_HOST_AUTH_METHOD", "trust")
            )
            url = f"postgresql://postgres@{host}:{port}/postgres"
            try:
                _wait_for(functools.partial(postgres_answers, url, timeout=1.0), f"Postgres container {POSTGRES_IMAGE}")
            except BaseException:
                container.stop()
                raise
            return ProvidedServer(url, "container", container.stop)
        else:
            server = EmbeddedPostgres().start()
            return ProvidedServer(server.url, "embedded", server.stop)
    raise ServerUnavailableError("no Postgres for tests: " + "; ".join(failures))


def provide_nats() -> ProvidedServer:
    """Find or start a NATS server with JetStream for a test session.

    Returns:
        The server; its :attr:`ProvidedServer.url` is a ``nats://`` URL.

    Raises:
        ServerUnavailableError: when an explicitly configured server does not answer, or no source works.
    """
    explicit = os.environ.get("STELLA_NATS_URL")
    url = explicit or DEFAULT_NATS_URL
    failures: list[str] = []
    for source in _sources():
        if source == "configured":
            if nats_answers(url):
                return ProvidedServer(url, "configured")
            if explicit:
                raise ServerUnavailableError(f"STELLA_NATS_URL={explicit} does not answer with JetStream")
            failures.append(f"no NATS with JetStream answers at {url}")
        elif source == "container":
            if not docker_answers():
                failures.append("no Docker engine answers")
                continue
            container, host, port = _start_container(NATS_IMAGE, 4222, lambda c: c.with_command("-js"))
            container_url = f"nats://{host}:{port}"
            try:
                _wait_for(functools.partial(nats_answers, container_url, timeout=1.0), f"NATS container {NATS_IMAGE}")
            except BaseException:
                container.stop()
                raise
            return ProvidedServer(container_url, "container", container.stop)
        else:
            server = EmbeddedNats().start()
            return ProvidedServer(server.url, "embedded", server.stop)
    raise ServerUnavailableError("no NATS for tests: " + "; ".join(failures))
