"""``/api/v1/admin/dead-letters``: a tenant's operators see its dead letters and replay each once, with one effect."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest_asyncio
from faststream.nats import NatsRouter
from nats.aio.client import Client

from stella.contracts.envelope import Command, Reply
from stella.contracts.streams import dead_letters_filter
from stella.gateway.settings import Settings
from stella.kit.broker import CommandProcessor, CommandRoutes
from stella.kit.service import ServiceRuntime
from stella.kit.settings import ServiceSettings
from stella.testing.messaging import collect_messages
from stella.testing.services import service_client

from .conftest import Gateway, assert_problem

SHIP = "stella.cmd.dlqtest.ship"
CONSUMER = "dlqtest-commands"
BASE = "/api/v1/admin/dead-letters"


class Ship(Command):
    parcel: str


class Depot:
    """A service whose handler has a bug until it is fixed; counts the effects of each parcel."""

    def __init__(self) -> None:
        self.broken = True
        self.effects: list[str] = []


@pytest_asyncio.fixture
async def depot(gateway_settings: Settings, tmp_path: Path) -> AsyncIterator[Depot]:
    depot = Depot()
    settings = ServiceSettings(
        database_url=gateway_settings.database_url,
        nats_url=gateway_settings.nats_url,
        nats_namespace=gateway_settings.nats_namespace,
        max_deliver=2,
        redelivery_backoff_s=0.05,
        ack_wait_s=5,
        db_pool_size=2,
    )

    def register(runtime: ServiceRuntime, router: NatsRouter) -> None:
        processor = CommandProcessor(lambda: runtime.pool, CONSUMER)

        async def ship(cmd: Ship) -> Reply:
            if depot.broken:
                raise RuntimeError(f"cannot ship {cmd.parcel}")

            async def execute(_: asyncpg.Connection) -> object:
                depot.effects.append(cmd.parcel)
                return {"shipped": cmd.parcel}

            return await processor.run(cmd, execute)

        routes = CommandRoutes("dlqtest", "dlqtest")
        routes.on(SHIP, Ship, ship)
        routes.attach(router, runtime)

    migrations = tmp_path / "migrations"
    migrations.mkdir()
    runtime = ServiceRuntime("dlqtest", settings, migrations, register)
    await runtime.start()
    try:
        yield depot
    finally:
        await runtime.stop()


async def test_operators_list_and_replay_their_tenants_dead_letters_once(
    gateway: Gateway, depot: Depot, nats: Client
) -> None:
    service = depot
    ours, theirs = await gateway.tenant("a"), await gateway.tenant("b")
    operator = await gateway.principal_token(ours, "ops", ["operator"])
    viewer = await gateway.principal_token(ours, "vic", ["viewer"])
    commands = {
        tenant.id: Ship(tenant_id=tenant.id, correlation_id=uuid.uuid4(), parcel=f"parcel-{tenant.name}")
        for tenant in (ours, theirs)
    }
    async with (
        service_client(nats, gateway.names) as client,
        collect_messages(nats.jetstream(), gateway.names.subject(dead_letters_filter(CONSUMER))) as dead,
    ):
        for command in commands.values():
            reply = await client.command(SHIP, command, timeout=15)
            assert reply.error is not None and reply.error.code == "SYS_COMMAND_FAILED"
        await dead.wait(2, timeout=15)

    listed = await gateway.call("GET", BASE, operator.token)
    assert listed.status_code == 200, listed.text
    [letter] = listed.json()["items"]
    assert letter["consumer"] == CONSUMER
    assert letter["subject"] == SHIP
    assert letter["message_id"] == str(commands[ours.id].message_id)
    assert letter["deliveries"] == 2
    assert "cannot ship parcel-" in letter["error"]
    assert letter["payload"]["parcel"] == f"parcel-{ours.name}"
    assert listed.json()["next_page_token"] is None
    assert (await gateway.call("GET", f"{BASE}/{letter['id']}", operator.token)).json() == letter

    # Viewers may not look; another tenant's dead letter does not exist for this one.
    assert_problem(await gateway.call("GET", BASE, viewer.token), 403, "PERM_DENIED")
    their_letters = (await gateway.call("GET", BASE, theirs.token)).json()["items"]
    [their_letter] = their_letters
    assert their_letter["id"] != letter["id"]
    assert_problem(await gateway.call("GET", f"{BASE}/{their_letter['id']}", operator.token), 404, "RES_NOT_FOUND")
    replay_theirs = await gateway.call("POST", f"{BASE}/{their_letter['id']}/replay", operator.token)
    assert_problem(replay_theirs, 404, "RES_NOT_FOUND")
    assert_problem(await gateway.call("POST", f"{BASE}/{letter['id']}/replay", viewer.token), 403, "PERM_DENIED")

    # Fixed, then replayed: handled once; the dead letter is gone and a second replay finds nothing.
    service.broken = False
    replayed = await gateway.call("POST", f"{BASE}/{letter['id']}/replay", operator.token)
    assert replayed.status_code == 202, replayed.text
    assert replayed.json() == {"id": letter["id"], "subject": SHIP, "message_id": letter["message_id"]}
    for _ in range(200):
        if service.effects:
            break
        await asyncio.sleep(0.05)
    assert service.effects == [f"parcel-{ours.name}"]
    assert_problem(await gateway.call("POST", f"{BASE}/{letter['id']}/replay", operator.token), 404, "RES_NOT_FOUND")
    assert (await gateway.call("GET", BASE, operator.token)).json()["items"] == []
    await asyncio.sleep(0.3)
    assert service.effects == [f"parcel-{ours.name}"]


async def test_dead_letters_are_paged_and_filtered_by_consumer(gateway: Gateway, depot: Depot, nats: Client) -> None:
    ours = await gateway.tenant("a")
    async with (
        service_client(nats, gateway.names) as client,
        collect_messages(nats.jetstream(), gateway.names.subject(dead_letters_filter(CONSUMER))) as dead,
    ):
        await asyncio.gather(
            *(
                client.command(SHIP, Ship(tenant_id=ours.id, correlation_id=uuid.uuid4(), parcel=f"p{i}"), timeout=15)
                for i in range(3)
            )
        )
        await dead.wait(3, timeout=15)
    seen: list[int] = []
    token: str | None = None
    while True:
        params: dict[str, str | int] = {"page_size": 2}
        if token:
            params["page_token"] = token
        page = await gateway.call("GET", BASE, ours.token, params=params)
        assert page.status_code == 200, page.text
        seen += [item["id"] for item in page.json()["items"]]
        token = page.json()["next_page_token"]
        if token is None:
            break
    assert len(seen) == 3 and seen == sorted(seen)
    other = await gateway.call("GET", BASE, ours.token, params={"consumer": "release-commands"})
    assert other.json()["items"] == []
    bad = await gateway.call("GET", BASE, ours.token, params={"consumer": "nope.>"})
    assert_problem(bad, 400, "VAL_INVALID_REQUEST")
