"""Starting a process: check the configuration and wait for Postgres and NATS, or exit with one clear line.

A process that cannot start because of how it is configured (a malformed URL, a wrong password, a missing
key file) or because a dependency never answered must say so in one log line and exit with a non-zero
code, not die in a traceback that a container runtime restarts over and over. :func:`run_process` is the
entry point every service's ``__main__`` goes through:

- settings that do not validate: one line naming each variable, exit 78 (``EX_CONFIG``);
- :class:`ConfigurationError` raised while starting: its message, exit 78;
- :class:`DependencyUnavailable` (a configured Postgres or NATS did not answer within
  ``STELLA_STARTUP_TIMEOUT_S``): its message, exit 69 (``EX_UNAVAILABLE``).

The process runs on uvloop's event loop (libuv) unless ``STELLA_EVENT_LOOP=asyncio`` asks for the standard
library's, or uvloop is not installed (:func:`run_loop`).

Postgres and NATS that are configured but still starting (a compose file or a Kubernetes rollout starting
everything at once) are waited for; a URL left at its default is not: nothing runs on ``127.0.0.1`` in a
container, so the process says the variable is unset at once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import asyncpg
import nats
import nats.errors
import nats.js.errors
from pydantic import ValidationError
from pydantic_settings import BaseSettings

log = logging.getLogger(__name__)

EX_UNAVAILABLE = 69
"""Exit code of a process whose Postgres or NATS never answered (sysexits ``EX_UNAVAILABLE``)."""

EX_CONFIG = 78
"""Exit code of a process that is configured wrongly (sysexits ``EX_CONFIG``)."""

_RETRY_S = 1.0


class StartupError(Exception):
    """The process cannot start; the message is the one line it logs before exiting with ``exit_code``."""

    exit_code = 1


class ConfigurationError(StartupError):
    """The configuration is wrong; waiting will not fix it."""

    exit_code = EX_CONFIG


class DependencyUnavailable(StartupError):
    """A configured dependency (Postgres, NATS) did not answer in time."""

    exit_code = EX_UNAVAILABLE


S = TypeVar("S", bound=BaseSettings)
T = TypeVar("T")

EventLoop = Literal["asyncio", "uvloop"]
"""The event loop a process runs on: ``uvloop`` (libuv, the default) or ``asyncio`` (the standard library's)."""


def loop_factory(name: EventLoop) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of the event loop ``name``; None for the standard library's (also when uvloop is missing)."""
    if name != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:  # not installed on this platform (Windows): the standard loop does the same work
        log.info("uvloop is not installed; running on the asyncio event loop")
        return None
    return uvloop.new_event_loop


def environment_event_loop() -> EventLoop:
    """The event loop ``STELLA_EVENT_LOOP`` names (default ``uvloop``), for a program without service settings."""
    value = os.environ.get("STELLA_EVENT_LOOP", "uvloop").strip().lower() or "uvloop"
    if value == "asyncio":
        return "asyncio"
    if value == "uvloop":
        return "uvloop"
    raise ConfigurationError(f"STELLA_EVENT_LOOP: expected asyncio or uvloop, got {value!r}")


def run_loop(main: Coroutine[Any, Any, T], name: EventLoop = "uvloop") -> T:
    """Run ``main`` to completion on a new event loop of kind ``name`` (``STELLA_EVENT_LOOP``), like ``asyncio.run``."""
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        return runner.run(main)


def env_name(settings_type: type[BaseSettings], field: str) -> str:
    """The environment variable that sets ``field`` of ``settings_type``."""
    info = settings_type.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    choices = getattr(alias, "choices", None)
    if choices:
        for choice in choices:
            if isinstance(choice, str) and choice.isupper():
                return choice
    prefix = str(settings_type.model_config.get("env_prefix", ""))
    return f"{prefix}{field}".upper()


def describe_invalid_settings(settings_type: type[BaseSettings], exc: ValidationError) -> str:
    """One line naming every variable that failed validation and why."""
    problems = []
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ())]
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if location:
            problems.append(f"{env_name(settings_type, location[0])}: {message}")
        else:
            problems.append(message)
    return "invalid configuration: " + "; ".join(problems)


def _redact(url: str) -> str:
    """``url`` without its password."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://{user}@{host}"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def wait_for_postgres(url: str, variable: str, *, configured: bool, timeout_s: float) -> None:
    """Wait until Postgres at ``url`` accepts a login.

    Args:
        url: The DSN.
        variable: The environment variable that names it (for the message).
        configured: Whether the variable was set; an unset one is not waited for.
        timeout_s: How long a configured server is waited for.

    Raises:
        ConfigurationError: on a refused login or an unknown database, or when the default URL does not answer.
        DependencyUnavailable: when a configured server does not answer within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn = await asyncpg.connect(url, timeout=min(5.0, timeout_s))
        except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
            raise ConfigurationError(f"PostgreSQL at {_redact(url)} ({variable}) refused the login: {exc}") from exc
        except asyncpg.InvalidCatalogNameError as exc:
            raise ConfigurationError(f"PostgreSQL at {_redact(url)} ({variable}): {exc}") from exc
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if not configured:
                raise ConfigurationError(
                    f"{variable} is not set and no PostgreSQL answers at the default {_redact(url)} "
                    f"({_reason(exc)}): set {variable}"
                ) from exc
            if time.monotonic() >= deadline:
                raise DependencyUnavailable(
                    f"PostgreSQL at {_redact(url)} ({variable}) did not answer within {timeout_s:g}s: {_reason(exc)}"
                ) from exc
            log.info("waiting for PostgreSQL", extra={"url": _redact(url), "reason": _reason(exc)})
            await asyncio.sleep(_RETRY_S)
            continue
        await conn.close()
        return


async def _nats_answers(url: str, timeout_s: float) -> None:
    """Check that a NATS server answers at ``url``: it greets every client with an ``INFO`` line.

    Raises:
        OSError, TimeoutError: when nothing answers.
        ConfigurationError: when something else than NATS answers.
    """
    parts = urlsplit(url)
    if parts.scheme in ("ws", "wss"):
        return  # a WebSocket endpoint greets after the HTTP upgrade; the client's connect checks it
    reader, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port or 4222), timeout_s)
    try:
        greeting = await asyncio.wait_for(reader.readline(), timeout_s)
    except TimeoutError as exc:
        raise TimeoutError(f"{_redact(url)} accepts connections but sends no NATS greeting") from exc
    finally:
        writer.close()
    if not greeting.startswith(b"INFO "):
        raise ConfigurationError(f"{_redact(url)} (STELLA_NATS_URL) answers, but it is not a NATS server")


async def wait_for_nats(servers: list[str], *, configured: bool, timeout_s: float) -> None:
    """Wait until one of ``servers`` accepts a connection, and check that it has JetStream.

    Raises:
        ConfigurationError: on refused credentials, a server without JetStream or that is not NATS, or an
            unset URL not answering.
        DependencyUnavailable: when configured servers do not answer within ``timeout_s``.
    """
    shown = ", ".join(_redact(url) for url in servers)
    attempt_s = min(5.0, timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            # A plain TCP greeting first: the client library retries a refused server on its own instead of failing.
            failures: list[BaseException] = []
            for url in servers:
                try:
                    await _nats_answers(url, attempt_s)
                    break
                except (OSError, TimeoutError) as exc:
                    failures.append(exc)
            else:
                raise failures[0]
            nc = await asyncio.wait_for(
                nats.connect(
                    servers=servers,
                    connect_timeout=attempt_s,
                    allow_reconnect=False,
                    error_cb=_ignore_error,  # the client logs each failed attempt with a traceback otherwise
                ),
                timeout=2 * attempt_s,
            )
        except nats.errors.AuthorizationError as exc:
            raise ConfigurationError(f"NATS at {shown} (STELLA_NATS_URL) refused the credentials") from exc
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            if not configured:
                raise ConfigurationError(
                    f"STELLA_NATS_URL is not set and no NATS answers at the default {shown} ({_reason(exc)}): "
                    "set STELLA_NATS_URL"
                ) from exc
            if time.monotonic() >= deadline:
                raise DependencyUnavailable(
                    f"NATS at {shown} (STELLA_NATS_URL) did not answer within {timeout_s:g}s: {_reason(exc)}"
                ) from exc
            log.info("waiting for NATS", extra={"url": shown, "reason": _reason(exc)})
            await asyncio.sleep(_RETRY_S)
            continue
        try:
            await nc.jetstream().account_info()
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError) as exc:
            raise ConfigurationError(
                f"NATS at {shown} (STELLA_NATS_URL) has no JetStream: start nats-server with --jetstream"
            ) from exc
        except (TimeoutError, nats.errors.TimeoutError) as exc:
            if time.monotonic() >= deadline:
                raise DependencyUnavailable(f"JetStream at {shown} did not answer within {timeout_s:g}s") from exc
            await nc.close()
            await asyncio.sleep(_RETRY_S)
            continue
        finally:
            if not nc.is_closed:
                await nc.close()
        return


async def _ignore_error(exc: Exception) -> None:
    """Errors of the probing connection are raised by ``connect`` itself and reported by the caller."""
    del exc


async def wait_for_dependencies(settings: Any, schema: str | None = None) -> None:
    """Wait for the Postgres and NATS of ``settings`` (a :class:`~stella.kit.settings.ServiceSettings`).

    With ``schema`` and service roles on, a service that leaves the migrations to a migration job logs in as
    its own role here too: its URLs then carry no owner's credentials.
    """
    given = settings.model_fields_set
    timeout_s = settings.startup_timeout_s

    def login(url: str) -> str:
        if schema is None or settings.migrate_on_start:
            return url
        return str(settings.as_service(url, schema))

    await wait_for_postgres(
        login(settings.database_url), "STELLA_DATABASE_URL", configured="database_url" in given, timeout_s=timeout_s
    )
    if settings.database_direct_url:
        await wait_for_postgres(
            login(settings.database_direct_url), "STELLA_DATABASE_DIRECT_URL", configured=True, timeout_s=timeout_s
        )
    await wait_for_nats(settings.nats_servers, configured="nats_url" in given, timeout_s=timeout_s)


def freeze_startup_heap() -> None:
    """Move every object alive now out of the cyclic collector's reach, once a process has started serving.

    What start-up builds (modules, models and their validators, routes, the broker's subscribers) lives as
    long as the process, yet every full collection would walk it again. Frozen, it is left alone; it is still
    freed by reference counting if it becomes garbage, and only a cycle among frozen objects would outlive
    its last reference. Called by the service and gateway processes, never by code that tests import.
    """
    gc.collect()
    gc.freeze()


def load_settings(name: str, settings_type: type[S]) -> S:
    """Build ``settings_type`` from the environment, or log one line and exit 78."""
    try:
        return settings_type()
    except ValidationError as exc:
        _configure_fallback_logging(name)
        log.error(describe_invalid_settings(settings_type, exc))
        sys.exit(EX_CONFIG)


def run_process(name: str, settings: Any, serve: Callable[[Any], Awaitable[None]], *, wait: bool = True) -> int:
    """Run ``serve(settings)`` after waiting for Postgres and NATS; returns the process exit code.

    Args:
        name: The service's name (for logs), which is also its schema.
        settings: The built settings (:func:`load_settings`).
        serve: Serves until a signal arrives.
        wait: Whether to wait for Postgres and NATS first.
    """

    async def main() -> None:
        if wait:
            await wait_for_dependencies(settings, name)
        await serve(settings)

    try:
        run_loop(main(), getattr(settings, "event_loop", "uvloop"))
    except StartupError as exc:
        log.error(str(exc), extra={"exit_code": exc.exit_code})
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


def _configure_fallback_logging(name: str) -> None:
    from stella.kit.logs import configure_logging

    if not logging.getLogger().handlers:
        configure_logging(name, "INFO")
