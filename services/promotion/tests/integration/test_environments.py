"""Environments, freeze windows, the environment state and freeze transition events, over real NATS and Postgres."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from stella.contracts import promotion as c
from stella.testing.messaging import collect_messages

from .conftest import Caller, Stack, first_match, payload


async def _environment(caller: Caller, name: str, order: int, **fields) -> dict:
    reply = await caller.command(c.CREATE_ENVIRONMENT, c.CreateEnvironment, name=name, order_index=order, **fields)
    assert reply.ok, reply.error
    return reply.data


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


async def test_environment_crud_in_promotion_order(caller: Caller, stack: Stack, nats) -> None:
    async with collect_messages(nats.jetstream(), stack.wire("stella.evt.promotion.>")) as events:
        prod = await _environment(
            caller,
            "prod",
            2,
            required_approvals=2,
            require_sod=True,
            config={"freeze_behavior": "reject", "variables": {"REGION": "eu-west-1"}},
            promotion_policy={"approver_groups": ["sre", "release-managers"]},
        )
        dev = await _environment(caller, "dev", 0, display_name="Development")
        staging = await _environment(caller, "staging", 1, config={"gates": [{"type": "security"}]})
        updated = await caller.command(
            c.UPDATE_ENVIRONMENT, c.UpdateEnvironment, environment_id=staging["id"], required_approvals=1
        )
        msgs = await events.wait(4)

    assert prod["config"]["freeze_behavior"] == "reject"
    assert prod["config"]["variables"] == {"REGION": "eu-west-1"}
    assert prod["promotion_policy"] == {"approver_groups": ["release-managers", "sre"]}
    assert dev["display_name"] == "Development" and dev["config"]["deployment_timeout_s"] == 600
    # Gate configs are stored with their defaults, as the gate registry validated them.
    assert staging["config"]["gates"][0]["config"]["max_critical"] == 0
    assert updated.ok and updated.data["required_approvals"] == 1
    assert [stack.names.local(m.subject) for m in msgs] == [
        c.ENVIRONMENT_CREATED,
        c.ENVIRONMENT_CREATED,
        c.ENVIRONMENT_CREATED,
        c.ENVIRONMENT_UPDATED,
    ]
    assert c.EnvironmentChanged.model_validate_json(msgs[3].data).environment.required_approvals == 1

    same = await caller.command(
        c.UPDATE_ENVIRONMENT, c.UpdateEnvironment, environment_id=staging["id"], required_approvals=1
    )
    assert same.data == updated.data  # nothing changed: no new version, no event
    bad = await caller.command(
        c.UPDATE_ENVIRONMENT, c.UpdateEnvironment, environment_id=staging["id"], config={"freeze_behavior": "pray"}
    )
    assert (bad.error.code, bad.error.errors[0]["loc"]) == ("ENV_VALIDATION_FAILED", ["config", "freeze_behavior"])
    assert (await caller.query(c.GET_ENVIRONMENT, c.GetEnvironment, environment_id=staging["id"])).data == updated.data

    listed = await caller.query(c.LIST_ENVIRONMENTS, c.ListEnvironments, page={"page_size": 2})
    assert [e["name"] for e in listed.data["items"]] == ["dev", "staging"]
    rest = await caller.query(
        c.LIST_ENVIRONMENTS, c.ListEnvironments, page={"page_size": 2, "page_token": listed.data["next_page_token"]}
    )
    assert [e["name"] for e in rest.data["items"]] == ["prod"] and rest.data["next_page_token"] is None
    got = await caller.query(c.GET_ENVIRONMENT, c.GetEnvironment, environment_id=prod["id"])
    assert got.data == prod

    hidden = await caller.other_tenant().query(c.GET_ENVIRONMENT, c.GetEnvironment, environment_id=prod["id"])
    assert (hidden.error.code, hidden.error.status) == ("ENV_NOT_FOUND", 404)


async def test_invalid_environments_are_refused_with_precise_codes(caller: Caller, stack: Stack) -> None:
    await _environment(caller, "dev", 0)
    cases = [
        ({"name": "dev", "order_index": 1}, ("RES_DUPLICATE_NAME", 409)),
        ({"name": "bad_name", "order_index": 1}, ("ENV_VALIDATION_FAILED", 400)),
        ({"name": "qa", "order_index": 1, "config": {"gates": [{"type": "lottery"}]}}, ("GATE_UNKNOWN_TYPE", 400)),
        (
            {"name": "qa", "order_index": 1, "config": {"gates": [{"type": "security", "config": {"max_high": -1}}]}},
            ("GATE_CONFIG_INVALID", 400),
        ),
        (
            {
                "name": "qa",
                "order_index": 1,
                "config": {"gates": [{"type": "policy", "config": {"rules": [{"name": "x", "expr": "1 +"}]}}]},
            },
            ("GATE_POLICY_SYNTAX", 400),
        ),
        ({"name": "qa", "order_index": 1, "config": {"variables": {"1BAD": "x"}}}, ("ENV_VALIDATION_FAILED", 400)),
        ({"name": "qa", "order_index": 1, "promotion_policy": {"colour": "red"}}, ("ENV_VALIDATION_FAILED", 400)),
    ]
    for fields, expected in cases:
        reply = await caller.command(c.CREATE_ENVIRONMENT, c.CreateEnvironment, **fields)
        assert not reply.ok, fields
        assert (reply.error.code, reply.error.status) == expected, (fields, reply.error)
    for timeout in (0, 10**18):
        invalid = await caller.command(
            c.CREATE_ENVIRONMENT,
            c.CreateEnvironment,
            name="qa",
            order_index=1,
            config={"deployment_timeout_s": timeout, "approval_timeout_s": timeout},
        )
        assert invalid.error.errors == [
            {"loc": ["config", key], "msg": "must be a positive integer (seconds), at most 31622400"}
            for key in ("deployment_timeout_s", "approval_timeout_s")
        ]
    # A policy rule that is not valid CEL is refused with where it fails, and nothing is stored.
    rules = [{"name": "ok", "expr": "true"}, {"name": "typo", "expr": 'release.name == "a" &&\n  relase.x'}]
    bad_policy = await caller.command(
        c.CREATE_ENVIRONMENT,
        c.CreateEnvironment,
        name="qa",
        order_index=1,
        config={"gates": [{"type": "policy", "config": {"rules": rules}}]},
    )
    assert (bad_policy.error.code, bad_policy.error.status) == ("GATE_POLICY_SYNTAX", 400)
    [where] = bad_policy.error.errors
    assert (where["rule"], where["line"], where["column"]) == ("typo", 2, 3)
    assert "unknown name 'relase'" in where["msg"]
    assert await stack.table_count("environments") == 1


async def test_delete_is_refused_while_promotions_reference_the_environment(caller: Caller, stack: Stack) -> None:
    dev = await _environment(caller, "dev", 0)
    spare = await _environment(caller, "spare", 5)
    release = await caller.ready_release("shop")
    requested = await caller.command(
        c.REQUEST_PROMOTION, c.RequestPromotion, release_id=release["id"], target_environment_id=dev["id"]
    )
    assert requested.ok, requested.error

    refused = await caller.command(c.DELETE_ENVIRONMENT, c.DeleteEnvironment, environment_id=dev["id"])
    assert (refused.error.code, refused.error.status) == ("ENV_IN_USE", 409)
    assert (await caller.query(c.GET_ENVIRONMENT, c.GetEnvironment, environment_id=dev["id"])).ok

    deleted = await caller.command(c.DELETE_ENVIRONMENT, c.DeleteEnvironment, environment_id=spare["id"])
    assert deleted.ok and deleted.data == {"id": spare["id"], "deleted": True}
    gone = await caller.query(c.GET_ENVIRONMENT, c.GetEnvironment, environment_id=spare["id"])
    assert gone.error.status == 404
    again = await caller.command(c.DELETE_ENVIRONMENT, c.DeleteEnvironment, environment_id=spare["id"])
    assert (again.error.code, again.error.status) == ("ENV_NOT_FOUND", 404)


async def test_freeze_window_validation_errors(caller: Caller, stack: Stack) -> None:
    env = await _environment(caller, "prod", 0)
    now = datetime.now(UTC)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"rrule": "FREQ=FORTNIGHTLY", "dtstart": now, "duration_s": 3600}, "ENV_FREEZE_RRULE_INVALID"),
        ({"rrule": "FREQ=WEEKLY;BYDAY=XX", "dtstart": now, "duration_s": 3600}, "ENV_FREEZE_RRULE_INVALID"),
        ({"start": now, "end": now + timedelta(hours=1), "timezone": "Mars/Olympus"}, "ENV_FREEZE_TIMEZONE_UNKNOWN"),
        ({"start": now, "end": now - timedelta(hours=1)}, "ENV_FREEZE_WINDOW_BOUNDS_INVALID"),
        ({"rrule": "FREQ=DAILY", "dtstart": now}, "ENV_FREEZE_DURATION_INVALID"),
        ({"rrule": "FREQ=DAILY", "end": now, "duration_s": 60}, "ENV_FREEZE_SCHEDULE_INVALID"),
        ({"start": now}, "ENV_FREEZE_SCHEDULE_INVALID"),
    ]
    for window, code in cases:
        reply = await caller.command(
            c.ADD_FREEZE_WINDOW,
            c.AddFreezeWindow,
            environment_id=env["id"],
            window={"reason": "freeze", **window},
        )
        assert not reply.ok, window
        assert (reply.error.code, reply.error.status) == (code, 400), (window, reply.error)
        assert reply.error.detail
    missing = await caller.command(
        c.ADD_FREEZE_WINDOW,
        c.AddFreezeWindow,
        environment_id=uuid.uuid4(),
        window={"reason": "x", "start": now, "end": now + timedelta(hours=1)},
    )
    assert (missing.error.code, missing.error.status) == ("ENV_NOT_FOUND", 404)
    listed = await caller.query(c.LIST_FREEZE_WINDOWS, c.ListFreezeWindows, environment_id=env["id"])
    assert listed.data["items"] == []


async def test_environment_state_follows_its_windows(caller: Caller, stack: Stack) -> None:
    env = await _environment(caller, "prod", 0)
    open_state = await caller.query(c.GET_ENVIRONMENT_STATE, c.GetEnvironmentState, environment_id=env["id"])
    assert open_state.data["closed"] is False and open_state.data["next_close"] is None

    now = datetime.now(UTC).replace(microsecond=0)
    end = now + timedelta(hours=1)
    added = await caller.command(
        c.ADD_FREEZE_WINDOW,
        c.AddFreezeWindow,
        environment_id=env["id"],
        window={"kind": "deny", "start": now - timedelta(hours=1), "end": end, "reason": "quarter-end close"},
    )
    assert added.ok, added.error
    weekly = await caller.command(
        c.ADD_FREEZE_WINDOW,
        c.AddFreezeWindow,
        environment_id=env["id"],
        window={
            "rrule": "FREQ=WEEKLY;BYDAY=FR",
            "dtstart": "2025-01-03T16:00:00",
            "duration_s": 64 * 3600,
            "timezone": "Europe/Berlin",
            "reason": "weekend freeze",
        },
    )
    assert weekly.ok, weekly.error
    assert (weekly.data["rrule"], weekly.data["dtstart"], weekly.data["duration_s"]) == (
        "FREQ=WEEKLY;BYDAY=FR",
        "2025-01-03T16:00:00",
        230400.0,
    )

    state = await caller.query(c.GET_ENVIRONMENT_STATE, c.GetEnvironmentState, environment_id=env["id"])
    assert state.data["closed"] is True
    assert "quarter-end close" in state.data["reason"]
    assert added.data["id"] in state.data["active_window_ids"]
    if state.data["active_window_ids"] == [added.data["id"]]:
        # Not inside a weekend: the environment opens when the one-off window ends.
        assert state.data["next_open"] == _iso(end)

    windows = await caller.query(c.LIST_FREEZE_WINDOWS, c.ListFreezeWindows, environment_id=env["id"])
    assert [w["id"] for w in windows.data["items"]] == [added.data["id"], weekly.data["id"]]

    for window in (added.data, weekly.data):
        removed = await caller.command(
            c.REMOVE_FREEZE_WINDOW, c.RemoveFreezeWindow, environment_id=env["id"], window_id=window["id"]
        )
        assert removed.ok, removed.error
    reopened = await caller.query(c.GET_ENVIRONMENT_STATE, c.GetEnvironmentState, environment_id=env["id"])
    assert reopened.data["closed"] is False and reopened.data["active_window_ids"] == []
    unknown = await caller.command(
        c.REMOVE_FREEZE_WINDOW, c.RemoveFreezeWindow, environment_id=env["id"], window_id=added.data["id"]
    )
    assert (unknown.error.code, unknown.error.status) == ("ENV_FREEZE_WINDOW_NOT_FOUND", 404)


async def test_freeze_started_and_ended_are_emitted_as_windows_open_and_close(
    caller: Caller, stack: Stack, nats
) -> None:
    env = await _environment(caller, "prod", 0)
    base = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    one_off = {"kind": "deny", "start": base, "end": base + timedelta(seconds=2), "reason": "db migration"}
    # A recurring window whose first occurrence falls within the next seconds, the next one a day later.
    daily = {
        "kind": "deny",
        "rrule": "FREQ=DAILY",
        "dtstart": (base + timedelta(seconds=1)).replace(tzinfo=None),
        "duration_s": 2,
        "timezone": "UTC",
        "reason": "nightly batch",
    }
    async with (
        collect_messages(nats.jetstream(), stack.wire(c.FREEZE_STARTED)) as started,
        collect_messages(nats.jetstream(), stack.wire(c.FREEZE_ENDED)) as ended,
    ):
        windows = []
        for spec in (one_off, daily):
            reply = await caller.command(c.ADD_FREEZE_WINDOW, c.AddFreezeWindow, environment_id=env["id"], window=spec)
            assert reply.ok, reply.error
            windows.append(reply.data["id"])
        opened = [payload(m) for m in await started.wait(2, timeout=15)]
        closed = [payload(m) for m in await ended.wait(2, timeout=15)]

    assert [(e["window_id"], e["at"]) for e in opened] == [
        (windows[0], _iso(base)),
        (windows[1], _iso(base + timedelta(seconds=1))),
    ]
    assert [(e["window_id"], e["at"]) for e in closed] == [
        (windows[0], _iso(base + timedelta(seconds=2))),
        (windows[1], _iso(base + timedelta(seconds=3))),
    ]
    assert opened[0]["reason"] == "db migration" and opened[0]["environment_id"] == env["id"]
    assert closed[1]["occurrence"] == f"{windows[1]}@{_iso(base + timedelta(seconds=1))}"
    async with stack.promotion.runtime.pool.acquire() as conn:
        rows = {
            str(r["id"]): r["next_transition_at"]
            for r in await conn.fetch("SELECT id, next_transition_at FROM freeze_windows")
        }
    # The one-off window is done; the daily one is next looked at when tomorrow's occurrence starts.
    assert rows == {windows[0]: None, windows[1]: base + timedelta(days=1, seconds=1)}


async def test_removing_an_active_window_ends_it_now(caller: Caller, stack: Stack, nats) -> None:
    env = await _environment(caller, "prod", 0)
    now = datetime.now(UTC)
    async with collect_messages(nats.jetstream(), stack.wire("stella.evt.promotion.>")) as events:
        added = await caller.command(
            c.ADD_FREEZE_WINDOW,
            c.AddFreezeWindow,
            environment_id=env["id"],
            window={"start": now - timedelta(minutes=5), "end": now + timedelta(hours=2), "reason": "incident"},
        )
        removed = await caller.command(
            c.REMOVE_FREEZE_WINDOW, c.RemoveFreezeWindow, environment_id=env["id"], window_id=added.data["id"]
        )
        assert removed.ok
        msgs = await events.wait(3)
    assert [stack.names.local(m.subject) for m in msgs] == [c.ENVIRONMENT_CREATED, c.FREEZE_STARTED, c.FREEZE_ENDED]
    body = await first_match(events, lambda b: b.get("window_id") == added.data["id"])
    assert body["reason"] == "incident"


async def test_the_board_gives_every_environment_with_its_state_and_the_newest_releases_cells(
    caller: Caller, stack: Stack
) -> None:
    dev = await _environment(caller, "dev", 0)
    prod = await _environment(caller, "prod", 1)
    now = datetime.now(UTC).replace(microsecond=0)
    frozen = await caller.command(
        c.ADD_FREEZE_WINDOW,
        c.AddFreezeWindow,
        environment_id=prod["id"],
        window={"start": now - timedelta(hours=1), "end": now + timedelta(hours=1), "reason": "audit"},
    )
    assert frozen.ok, frozen.error
    older = await caller.ready_release("shop-1")
    newer = await caller.ready_release("shop-2")
    promoted = []
    for release in (older, newer):
        reply = await caller.command(
            c.REQUEST_PROMOTION, c.RequestPromotion, release_id=release["id"], target_environment_id=dev["id"]
        )
        assert reply.ok, reply.error
        promoted.append(reply.data["id"])

    board = await caller.query(c.GET_ENVIRONMENT_BOARD, c.GetEnvironmentBoard, releases=10)
    assert board.ok, board.error
    entries = board.data["environments"]
    assert [e["environment"]["name"] for e in entries] == ["dev", "prod"]
    assert [e["state"]["closed"] for e in entries] == [False, True]
    assert entries[1]["state"]["next_open"] == _iso(now + timedelta(hours=1))
    assert all(e["windows"] == [] for e in entries)  # not asked for
    # Newest release first, one cell each, its latest promotion.
    assert [(cell["release_name"], cell["promotion_id"]) for cell in board.data["cells"]] == [
        ("shop-2", promoted[1]),
        ("shop-1", promoted[0]),
    ]
    assert {cell["environment_id"] for cell in board.data["cells"]} == {dev["id"]}

    newest = await caller.query(c.GET_ENVIRONMENT_BOARD, c.GetEnvironmentBoard, releases=1, include_windows=True)
    assert [cell["release_name"] for cell in newest.data["cells"]] == ["shop-2"]
    assert [w["id"] for w in newest.data["environments"][1]["windows"]] == [frozen.data["id"]]
    none = await caller.query(c.GET_ENVIRONMENT_BOARD, c.GetEnvironmentBoard, releases=0)
    assert none.data["cells"] == [] and len(none.data["environments"]) == 2
