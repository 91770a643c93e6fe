"""Composition root of the gateway: the only place that builds its dependencies.

:func:`create_app` returns a Litestar application. When it starts, it opens the asyncpg pool on the
``gateway`` schema and applies the migrations, connects to NATS, declares the streams and starts the
service client; when it stops, it writes pending token uses and closes everything it opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final, TypedDict
from uuid import UUID

import asyncpg
import nats
from litestar import Litestar
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme, Server, Tag
from litestar.plugins.pydantic import PydanticPlugin
from litestar.static_files import create_static_files_router
from nats.aio.client import Client as NatsClient

from stella.contracts.envelope import Reply, utcnow
from stella.gateway.agents import TaskNotices
from stella.gateway.auth import Authenticator, TokenAuthMiddleware
from stella.gateway.controllers import (
    AgentChannelController,
    AgentController,
    AgentTokenController,
    AsyncAPIController,
    ComponentController,
    DeadLetterController,
    DeploymentJobController,
    EnvironmentController,
    EnvironmentTargetController,
    EventController,
    EvidenceController,
    HealthController,
    IntegrationController,
    IntegrationTypeController,
    OpenAPIController,
    PluginController,
    PluginInstanceController,
    PrincipalController,
    PromotionController,
    PromotionDeploymentController,
    ReleaseController,
    ScanResultController,
    SecretController,
    TargetController,
    TenantController,
    TokenController,
    WebhookController,
    WorkflowRunController,
    WorkflowTemplateController,
)
from stella.gateway.controllers.openapi import EnforcedJsonRenderPlugin, EnforcedSwaggerRenderPlugin
from stella.gateway.controllers.ui import UI_PREFIX, DashboardController
from stella.gateway.dependencies import DEPENDENCIES, RUNTIME_STATE_KEY
from stella.gateway.exports import BundleReader
from stella.gateway.idempotency import IdempotencyMiddleware, IdempotencyPolicy
from stella.gateway.methods import set_allow_header
from stella.gateway.problems import problem_response
from stella.gateway.relay import Relay
from stella.gateway.runtime import Runtime
from stella.gateway.settings import Settings
from stella.gateway.store import GatewayStore
from stella.gateway.streams import EventStreams
from stella.gateway.tracing import SpanMiddleware, TraceMiddleware, add_trace_header
from stella.gateway.validation import RequestValidationMiddleware, StrictBodyPlugin
from stella.kit import tracing
from stella.kit.broker import ServiceClient, declare_streams
from stella.kit.db import create_pool
from stella.kit.deadletters import DeadLetterStore
from stella.kit.migrations import prepare_schema
from stella.kit.naming import Names

log = logging.getLogger(__name__)

SCHEMA: Final[str] = "gateway"
"""The gateway's Postgres schema."""

MIGRATIONS: Final[Path] = Path(__file__).parent / "migrations"
"""The gateway's migration files."""

API_PREFIX: Final[str] = "/api/v1"
"""Prefix of the public API."""

DOCS_PATH: Final[str] = "/api/docs"
"""The interactive API docs (Swagger UI); the OpenAPI document is also at ``/api/docs/openapi.json``."""

DOCS_ASSETS: Final[str] = f"{DOCS_PATH}/assets"
"""Where the docs page's scripts and styles are served from (bundled: the page works offline)."""

SWAGGER_UI: Final[Path] = Path(__file__).parent / "static" / "swagger-ui"
"""The vendored swagger-ui-dist (see its VERSION file): a Swagger UI that renders OpenAPI 3.1, no network needed."""

PURGE_INTERVAL_S: Final[float] = 600.0
"""Seconds between deletions of expired idempotency keys."""

TAGS: Final[tuple[Tag, ...]] = (
    Tag(name="health", description="Liveness and readiness; no token needed."),
    Tag(name="tenants", description="Tenants of the installation (platform admins of the operator tenant only)."),
    Tag(name="principals", description="People and machines of the tenant and their roles (tenant admins)."),
    Tag(name="tokens", description="API tokens of the tenant's principals (tenant admins)."),
    Tag(name="components", description="Image repositories and their tag -> digest version maps."),
    Tag(name="releases", description="Immutable bundles of image digests."),
    Tag(name="environments", description="The promotion order, approval rules, freeze and deployment windows."),
    Tag(name="scan-results", description="Vulnerability scan verdicts of image digests (the security gate)."),
    Tag(
        name="promotions",
        description="Releases promoted into environments: gates, decision records, approvals, freeze overrides.",
    ),
    Tag(
        name="targets",
        description="Hosts an environment deploys to (docker_host, compose_host), their health and drift.",
    ),
    Tag(
        name="agents",
        description="Agents on target hosts: registration tokens, registration, heartbeats, the task feed, results.",
    ),
    Tag(name="deployments", description="Deployment jobs and tasks by strategy, rollback, a promotion's deployment."),
    Tag(name="workflows", description="Workflow templates (DAGs of steps) and the runs that execute promotions."),
    Tag(name="evidence", description="Signed, chained evidence packets, their verification, keys and export."),
    Tag(
        name="dead-letters",
        description="Messages the services gave up on, with the error that stopped each; replayed once fixed.",
    ),
    Tag(
        name="events",
        description="Public events (CloudEvents): live as Server-Sent Events, as a list, and their catalogue "
        "(the AsyncAPI document is at /api/v1/asyncapi.json).",
    ),
    Tag(name="webhooks", description="Outside systems subscribed to public events, signed per Standard Webhooks."),
    Tag(name="integrations", description="Registries, notification channels and secret stores Stella works with."),
    Tag(name="secrets", description="The built-in secret store: write-only values, encrypted at rest."),
    Tag(
        name="plugins",
        description="Plugins installed on the server, and the ones each tenant enables (isolated gates and steps).",
    ),
)
"""Tags of the API description, in the order the docs page shows them."""

# Paths that need no token: the API description and its docs page (health routes opt out themselves).
_PUBLIC_PATHS: Final[list[str]] = [
    rf"^{DOCS_PATH}(/|$)",
    rf"^{API_PREFIX}/openapi\.json$",
    rf"^{API_PREFIX}/asyncapi\.json$",
    # The dashboard authenticates its session cookie itself (stella.gateway.controllers.ui).
    rf"^{UI_PREFIX}(/|$)",
]


class Overrides(TypedDict, total=False):
    """Dependencies a caller (a test, an embedding launcher) provides instead of having them built.

    Attributes:
        clock: Returns the current UTC time (token expiry, idempotency expiry, timestamps).
        pool: An asyncpg pool whose ``search_path`` is the gateway schema; used as is and not closed.
        nats: A connected NATS client; used as is and not closed.
    """

    clock: Callable[[], datetime]
    pool: asyncpg.Pool
    nats: NatsClient


def create_app(settings: Settings, *, overrides: Overrides | None = None) -> Litestar:
    """Build the gateway's Litestar application.

    Args:
        settings: The gateway's settings.
        overrides: Dependencies to use instead of building them (see :class:`Overrides`).

    Returns:
        The application; its start-up connects to Postgres and NATS.
    """
    given: Overrides = overrides or {}
    runtime = Runtime(settings=settings, clock=given.get("clock", utcnow))

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await _start(runtime, given, stack)
            try:
                yield
            finally:
                await _stop(runtime)

    return Litestar(
        route_handlers=[
            HealthController,
            OpenAPIController,
            TenantController,
            AsyncAPIController,
            PrincipalController,
            TokenController,
            ComponentController,
            ReleaseController,
            EnvironmentController,
            ScanResultController,
            PromotionController,
            WorkflowTemplateController,
            WorkflowRunController,
            EnvironmentTargetController,
            TargetController,
            AgentTokenController,
            AgentChannelController,
            AgentController,
            DeploymentJobController,
            PromotionDeploymentController,
            EvidenceController,
            DeadLetterController,
            EventController,
            WebhookController,
            IntegrationTypeController,
            IntegrationController,
            SecretController,
            PluginController,
            PluginInstanceController,
            DashboardController,
            create_static_files_router(
                path=DOCS_ASSETS,
                directories=[SWAGGER_UI],
                opt={"exclude_from_auth": True},
                include_in_schema=False,
            ),
        ],
        dependencies=DEPENDENCIES,
        # Response bodies are written with their field aliases: a workflow edge is {"from", "to"}.
        # Request bodies are validated strictly, every one the same way (stella.gateway.validation).
        plugins=[PydanticPlugin(prefer_alias=True), StrictBodyPlugin()],
        middleware=[
            TraceMiddleware,
            SpanMiddleware,
            DefineMiddleware(TokenAuthMiddleware, authenticator=runtime.get_authenticator, exclude=_PUBLIC_PATHS),
            DefineMiddleware(RequestValidationMiddleware, form_prefix=f"{UI_PREFIX}/"),
            DefineMiddleware(IdempotencyMiddleware, policy=runtime.get_idempotency),
        ],
        exception_handlers={Exception: problem_response},
        before_send=[add_trace_header, set_allow_header],
        lifespan=[lifespan],
        state=State({RUNTIME_STATE_KEY: runtime}),
        openapi_config=_openapi(settings),
        request_max_body_size=settings.max_body_bytes,
        logging_config=None,
        debug=False,
    )


def _openapi(settings: Settings) -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Stella Release Orchestrator API",
        version="1.0.0",
        description=(
            "Releases pinned by digest, promoted through environments. Every request needs "
            "'Authorization: Bearer <token>'; errors are RFC 9457 problem details (application/problem+json) "
            "with a stable code and a trace_id; lists are paged with page_size and page_token; every POST "
            "accepts an Idempotency-Key."
        ),
        path=DOCS_PATH,
        render_plugins=[
            EnforcedSwaggerRenderPlugin(
                path="/",
                js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                standalone_preset_js_url=f"{DOCS_ASSETS}/swagger-ui-standalone-preset.js",
                favicon=f'<link rel="icon" type="image/png" href="{DOCS_ASSETS}/favicon-32x32.png">',
            ),
            EnforcedJsonRenderPlugin(),
        ],
        servers=[Server(url=settings.public_url)] if settings.public_url else [Server(url="/")],
        components=Components(
            security_schemes={
                "bearerToken": SecurityScheme(
                    type="http", scheme="bearer", description="An API token (stl_...) from POST /api/v1/tokens."
                ),
                "agentCredential": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="An agent credential (stag_...) from POST /api/v1/agents/register.",
                ),
            }
        ),
        security=[{"bearerToken": []}],
        tags=list(TAGS),
        use_handler_docstrings=True,
        create_examples=False,
    )


async def _start(runtime: Runtime, given: Overrides, stack: AsyncExitStack) -> None:
    settings = runtime.settings
    if not tracing.enabled() and tracing.configure_from_env("gateway"):
        stack.callback(tracing.uninstall)
    # The migration lock is held by a session: a connection of its own, bypassing a transaction pooler.
    applied = await prepare_schema(
        settings.direct_database_url
        if settings.migrate_on_start
        else settings.as_service(settings.direct_database_url, SCHEMA),
        SCHEMA,
        MIGRATIONS,
        migrate=settings.migrate_on_start,
        timeout_s=settings.startup_timeout_s,
        service_role=settings.service_role(SCHEMA),
        role_password=settings.role_password,
    )
    if applied:
        log.info("applied migrations", extra={"migrations": applied})
    pool = given.get("pool")
    if pool is None:
        pool = await create_pool(
            settings.as_service(settings.database_url, SCHEMA),
            SCHEMA,
            max_size=settings.db_pool_size,
            pool_mode=settings.database_pool_mode,
        )
        stack.push_async_callback(pool.close)

    nc = given.get("nats")
    if nc is None:
        nc = await nats.connect(
            servers=settings.nats_servers,
            name="stella-gateway",
            # Keep reconnecting for as long as the process lives; readiness reports the outage meanwhile.
            max_reconnect_attempts=-1,
        )
        stack.push_async_callback(_close_nats, nc)
    js = nc.jetstream()
    names = Names(settings.nats_namespace)
    await declare_streams(js, names, replicas=settings.nats_stream_replicas)

    store = GatewayStore(pool)

    async def keep_late_reply(tenant_id: UUID, message_id: UUID, reply: Reply) -> None:
        await store.store_late_reply(tenant_id, message_id, reply.model_dump(mode="json"))

    client = ServiceClient(nc, js, names=names, on_late_reply=keep_late_reply)
    await client.start()
    stack.push_async_callback(client.stop)

    runtime.pool = pool
    runtime.nats = nc
    runtime.store = store
    runtime.authenticator = Authenticator(
        store, runtime.clock, ttl_s=settings.token_cache_ttl_s, max_entries=settings.token_cache_size
    )
    runtime.relay = Relay(
        client, command_timeout_s=settings.command_timeout_s, query_timeout_s=settings.query_timeout_s
    )
    runtime.exports = BundleReader(js)
    runtime.dead_letters = DeadLetterStore(js, names)
    runtime.event_streams = EventStreams(
        js, names, heartbeat_s=settings.stream_heartbeat_s, max_clients=settings.stream_max_clients
    )
    runtime.idempotency = IdempotencyPolicy(
        store=store,
        clock=runtime.clock,
        ttl=timedelta(seconds=settings.idempotency_ttl_s),
        lock=timedelta(seconds=settings.idempotency_lock_s),
    )
    notices = TaskNotices(nc, names)
    await notices.start()
    stack.push_async_callback(notices.stop)
    runtime.task_notices = notices
    task = asyncio.create_task(_maintain(runtime), name="gateway-maintenance")
    stack.push_async_callback(_cancel, task)


async def _stop(runtime: Runtime) -> None:
    # Token uses collected since the last batch are written before the pool closes.
    if runtime.authenticator is not None:
        try:
            await runtime.authenticator.flush_usage()
        except Exception:
            log.exception("could not write the last token uses")
    runtime.pool = runtime.nats = None
    runtime.store = runtime.authenticator = runtime.relay = runtime.idempotency = runtime.exports = None
    runtime.dead_letters = None
    runtime.event_streams = None
    runtime.task_notices = None


async def _maintain(runtime: Runtime) -> None:
    """Write token uses every ``token_touch_interval_s`` and purge expired idempotency keys and dashboard sessions now and then."""
    settings = runtime.settings
    last_purge = float("-inf")
    while True:
        await asyncio.sleep(settings.token_touch_interval_s)
        authenticator, store = runtime.authenticator, runtime.store
        if authenticator is None or store is None:
            return
        try:
            await authenticator.flush_usage()
            if time.monotonic() - last_purge >= PURGE_INTERVAL_S:
                while await store.purge_expired_keys(runtime.clock()) > 0:
                    pass
                while await store.purge_sessions(runtime.clock()) > 0:
                    pass
                last_purge = time.monotonic()
        except Exception:
            # The database may be briefly away; the next round tries again (uses are kept meanwhile).
            log.warning("gateway maintenance round failed", exc_info=True)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _close_nats(nc: NatsClient) -> None:
    with contextlib.suppress(Exception):
        await nc.drain()
