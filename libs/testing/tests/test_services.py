"""Service test helpers: a namespace of the test's own cleaned up precisely, and a caller playing one tenant."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from stella.contracts.envelope import Command, Query, Reply
from stella.contracts.streams import ALL_STREAMS, StreamSpec
from stella.kit.broker import ServiceClient
from stella.kit.naming import Names
from stella.testing.services import TenantCaller, delete_namespace_streams, namespace_stream_suffix

_BUCKET = StreamSpec(name="STELLA_TEST_BUCKET", subjects=(), max_age_s=60, duplicate_window_s=0, description="")


async def _add_streams(js: JetStreamContext, names: Names) -> set[str]:
    for spec in ALL_STREAMS:
        await js.add_stream(name=names.stream(spec), subjects=names.stream_subjects(spec))
    return {names.stream(spec) for spec in ALL_STREAMS}


async def _existing(js: JetStreamContext, streams: set[str]) -> set[str]:
    found = set()
    for stream in streams:
        try:
            await js.stream_info(stream)
        except NotFoundError:
            continue
        found.add(stream)
    return found


def test_stella_namespace_is_valid_for_names_and_unique_to_the_test(stella_namespace: str, unique_id: str) -> None:
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]{0,31}", stella_namespace)
    assert unique_id in stella_namespace
    assert Names(stella_namespace).namespace == stella_namespace


def test_the_suffix_is_what_names_appends_to_every_stream() -> None:
    names = Names("t-1a")
    assert namespace_stream_suffix(names) == "_T_1A"
    assert all(names.stream(spec) == spec.name + "_T_1A" for spec in (*ALL_STREAMS, _BUCKET))
    with pytest.raises(ValueError, match="empty namespace"):
        namespace_stream_suffix(Names())


async def test_deleting_a_namespace_removes_its_streams_and_buckets_and_nothing_else(
    nats: Client, unique_id: str
) -> None:
    js = nats.jetstream()
    ours = Names(f"t{unique_id}")
    # Stream names of "x-t<id>" end in "_T<id>" too, and "t<id>0" starts like ours: neither may be touched.
    ending_alike, starting_alike = Names(f"x-t{unique_id}"), Names(f"t{unique_id}0")
    expected = await _add_streams(js, ours)
    await js.create_object_store(ours.stream(_BUCKET))
    await js.create_key_value(bucket=ours.stream(_BUCKET))
    expected |= {f"OBJ_{ours.stream(_BUCKET)}", f"KV_{ours.stream(_BUCKET)}"}
    others = await _add_streams(js, ending_alike) | await _add_streams(js, starting_alike)
    await js.create_object_store(starting_alike.stream(_BUCKET))
    others.add(f"OBJ_{starting_alike.stream(_BUCKET)}")
    try:
        deleted = await delete_namespace_streams(js, ours)

        assert sorted(deleted) == sorted(expected)
        assert await _existing(js, expected) == set()
        assert await _existing(js, others) == others
    finally:
        for names in (ours, ending_alike, starting_alike):
            await delete_namespace_streams(js, names)
    assert await _existing(js, others) == set()


async def test_deleting_the_empty_namespace_is_refused(nats: Client) -> None:
    with pytest.raises(ValueError, match="empty namespace"):
        await delete_namespace_streams(nats.jetstream(), Names())


class Ping(Command):
    note: str = ""


class Look(Query):
    what: str = ""


class RecordingClient:
    """Records what a caller sends instead of sending it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any, dict[str, Any]]] = []

    async def command(self, subject: str, command: Command, **options: Any) -> Reply:
        self.sent.append((subject, command, options))
        return Reply.success("command")

    async def query(self, subject: str, query: Query, **options: Any) -> Reply:
        self.sent.append((subject, query, options))
        return Reply.success("query")


def _caller(**fields: Any) -> tuple[TenantCaller, RecordingClient]:
    recorder = RecordingClient()
    client: ServiceClient = recorder  # type: ignore[assignment]
    return TenantCaller(client, **fields), recorder


async def test_a_caller_sends_as_its_tenant_with_a_new_correlation_each_time() -> None:
    caller, client = _caller()
    assert (await caller.command("stella.cmd.test.ping", Ping, note="a")).data == "command"
    assert (await caller.query("stella.rpc.test.look", Look, what="b")).data == "query"
    [(c_subject, ping, c_options), (q_subject, look, q_options)] = client.sent
    assert (c_subject, q_subject) == ("stella.cmd.test.ping", "stella.rpc.test.look")
    assert isinstance(ping, Ping) and ping.note == "a"
    assert isinstance(look, Look) and look.what == "b"
    assert ping.tenant_id == look.tenant_id == caller.tenant_id
    assert ping.correlation_id != look.correlation_id
    assert ping.actor_id is None
    # The client's own default timeouts apply unless the caller sets one for queries.
    assert c_options == q_options == {}


async def test_a_query_timeout_is_passed_to_the_client() -> None:
    caller, client = _caller(query_timeout=30)
    await caller.query("stella.rpc.test.look", Look)
    await caller.command("stella.cmd.test.ping", Ping)
    assert [options for _, _, options in client.sent] == [{"timeout": 30}, {}]


async def test_acting_as_a_principal_sets_the_actor_of_commands_unless_one_is_given() -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    caller, client = _caller()
    acting = caller.acting_as(alice)
    await acting.command("stella.cmd.test.ping", Ping)
    await acting.command("stella.cmd.test.ping", Ping, actor_id=bob)
    assert [command.actor_id for _, command, _ in client.sent] == [alice, bob]
    assert acting.tenant_id == caller.tenant_id
    assert caller.actor_id is None


@dataclass
class Subclassed(TenantCaller):
    label: str = "extra"


async def test_another_tenant_keeps_the_subclass_and_acts_as_a_new_principal() -> None:
    recorder = RecordingClient()
    client: ServiceClient = recorder  # type: ignore[assignment]
    caller = Subclassed(client, label="kept", query_timeout=3)
    stranger = caller.other_tenant()
    assert isinstance(stranger, Subclassed)
    assert (stranger.label, stranger.query_timeout, stranger.client) == ("kept", 3, client)
    assert stranger.tenant_id != caller.tenant_id
    assert stranger.actor_id is None

    acting = caller.acting_as(uuid.uuid4())
    acting_stranger = acting.other_tenant()
    assert acting_stranger.actor_id is not None
    assert acting_stranger.actor_id != acting.actor_id
    assert acting_stranger.tenant_id != acting.tenant_id
