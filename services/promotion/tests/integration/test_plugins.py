"""A promotion whose environment has a plugin gate and whose template has a plugin step, with the real
release, workflow and approval services in-process, the example plugins installed, and misbehaving ones.

The gate's verdict is in the decision record and the step's output in the run; a gate plugin that crashes,
spins, answers 100 MB or answers garbage denies the promotion with the reason; a step plugin that crashes is
retried as its step says; every service keeps answering.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from nats.aio.client import Client

from stella.contracts import integration as i
from stella.contracts import promotion as c
from stella.contracts import workflow as w
from stella.testing.plugins import enable_plugin
from stella.testing.services import service_client

from .conftest import Caller, Stack, plugin_stack

EXAMPLE_PLUGINS = Path(__file__).parents[4] / "plugins"
TEMPLATE = "plugin-promotion"
PROLOGUE = (
    "import json, sys\n"
    "request = json.loads(sys.stdin.readline())\n"
    "def answer(result):\n"
    "    print(json.dumps({'jsonrpc': '2.0', 'id': request['id'], 'result': result}), flush=True)\n"
)
MISBEHAVING_GATES = {
    "gate-crashes": "sys.exit(3)\n",
    "gate-spins": "while True:\n    pass\n",
    "gate-floods": "chunk = 'x' * (1024 * 1024)\nfor _ in range(100):\n    sys.stdout.write(chunk)\n",
    "gate-garbles": "print('{this is not json', flush=True)\n",
}


def _write_plugin(root: Path, plugin_id: str, capability: str, body: str) -> None:
    directory = root / plugin_id
    directory.mkdir(parents=True)
    manifest = {
        "id": plugin_id,
        "version": "1.0.0",
        "vendor": "Tests",
        "capabilities": [capability],
        "entrypoint": "p.py",
    }
    (directory / "stella-plugin.json").write_text(json.dumps(manifest))
    (directory / "p.py").write_text(PROLOGUE + body)


@pytest_asyncio.fixture
async def ticket_api() -> AsyncIterator[str]:
    """A local change-ticket API: CHG-1 is approved, CHG-2 pending."""
    tickets = {"CHG-1": "approved", "CHG-2": "pending"}

    async def ticket(request: web.Request) -> web.Response:
        status = tickets.get(request.match_info["ticket"])
        if status is None:
            return web.json_response({}, status=404)
        return web.json_response({"status": status})

    app = web.Application()
    app.router.add_get("/changes/{ticket}", ticket)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/changes"
    await runner.cleanup()


@pytest_asyncio.fixture
async def stack(
    make_database, nats_url: str, nats: Client, stella_namespace: str, tmp_path: Path
) -> AsyncIterator[Stack]:
    for plugin_id, body in MISBEHAVING_GATES.items():
        _write_plugin(tmp_path, plugin_id, "gate", body)
    _write_plugin(tmp_path, "step-crashes", "step", "sys.exit(3)\n")
    counting = (
        "with open('calls', 'a') as calls:\n    calls.write('call\\n')\nanswer({'allow': True, 'message': 'counted'})\n"
    )
    _write_plugin(tmp_path, "gate-counts", "gate", counting)
    plugins = {"plugin_path": f"{EXAMPLE_PLUGINS}:{tmp_path}", "plugin_timeout_s": 3.0, "plugin_cpu_s": 30}
    async for value in plugin_stack(make_database, nats_url, nats, stella_namespace, plugins):
        yield value


@pytest_asyncio.fixture
async def caller(stack: Stack, nats: Client) -> AsyncIterator[Caller]:
    async with service_client(nats, stack.names) as client:
        yield Caller(client)


SOURCES = {"change-ticket": "change_ticket", "smoke-test": "smoke_test"}
"""The directory each example plugin is installed from (a test plugin's is its id)."""


async def _enable(caller: Caller, plugin_id: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    return await enable_plugin(caller, SOURCES.get(plugin_id, plugin_id), plugin_id, config)


async def _prepare(
    caller: Caller, gate: dict[str, Any], step: dict[str, Any], *, instances: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The tenant's plugin instances (the gate's and step's plugins, ``instances`` holding their configs), its
    promotion template (gates -> smoke), an environment with ``gate``, and a ready release."""
    for plugin_id in {gate["config"]["plugin"], step.get("plugin")} - {None}:
        await _enable(caller, plugin_id, (instances or {}).get(plugin_id))
    nodes = [
        {"id": "gates", "type": "gate"},
        {
            "id": "smoke",
            "type": "script",
            "timeout_s": 60,
            "retry": {"max_attempts": 2, "backoff_s": 0},
            "config": step,
        },
    ]
    saved = await caller.command(
        w.SAVE_TEMPLATE,
        w.SaveTemplate,
        name=TEMPLATE,
        nodes=nodes,
        edges=[{"from": "gates", "to": "smoke"}],
        inputs={name: {"required": False} for name in w.PROMOTION_RUN_INPUTS},
    )
    assert saved.ok, saved.error
    environment = await caller.command(
        c.CREATE_ENVIRONMENT,
        c.CreateEnvironment,
        name="prod",
        order_index=1,
        config={"gates": [gate]},
        promotion_policy={"workflow_template": TEMPLATE},
    )
    assert environment.ok, environment.error
    return environment.data


async def _promote(caller: Caller, environment: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Request a promotion and wait for its run to end; returns the promotion and the run."""
    release = await caller.ready_release("shop")
    reply = await caller.command(
        c.REQUEST_PROMOTION,
        c.RequestPromotion,
        release_id=release["id"],
        target_environment_id=environment["id"],
        reason="routine release",
    )
    assert reply.ok, reply.error
    promotion = reply.data
    async with asyncio.timeout(60):
        while True:
            run = await caller.query(w.GET_RUN, w.GetRun, run_id=promotion["workflow_run_id"])
            if run.ok and run.data["status"] in ("succeeded", "failed", "cancelled"):
                break
            await asyncio.sleep(0.1)
    current = await caller.query(c.GET_PROMOTION, c.GetPromotion, promotion_id=promotion["id"])
    assert current.ok, current.error
    return current.data, run.data


def _gate(decision: dict[str, Any], name: str) -> dict[str, Any]:
    return next(g for g in decision["gates"] if g["name"] == name)


def _step(run: dict[str, Any], node_id: str) -> dict[str, Any]:
    return next(s for s in run["steps"] if s["node_id"] == node_id)


def _change_gate(ticket: str) -> dict[str, Any]:
    """A change-ticket gate; the ticket API's URL is the tenant's plugin instance's config."""
    return {"type": "plugin", "name": "change", "config": {"plugin": "change-ticket", "config": {"ticket": ticket}}}


def _ticket_instance(url: str) -> dict[str, Any]:
    return {"change-ticket": {"url": url}}


SMOKE = {"plugin": "smoke-test", "config": {"command": [sys.executable, "-c", "print('smoke ok')"]}}


async def test_the_gate_verdict_is_in_the_decision_and_the_step_output_in_the_run(
    caller: Caller, ticket_api: str
) -> None:
    environment = await _prepare(caller, _change_gate("CHG-1"), SMOKE, instances=_ticket_instance(ticket_api))

    promotion, run = await _promote(caller, environment)

    decision = await caller.query(c.GET_DECISION, c.GetDecision, promotion_id=promotion["id"])
    assert decision.ok, decision.error
    record = decision.data["record"]
    assert record["result"] == "allow"
    change = _gate(record, "change")
    assert (change["type"], change["status"]) == ("plugin", "pass")
    assert change["message"] == "change ticket CHG-1 is approved"
    assert change["details"] == {"plugin": "change-ticket", "ticket": "CHG-1", "status": "approved"}
    # The verdict is stored with the inputs, so the decision replays without asking the plugin again.
    assert decision.data["inputs"]["plugin_verdicts"]["change"]["status"] == "pass"
    assert run["status"] == "succeeded"
    smoke = _step(run, "smoke")
    assert (smoke["status"], smoke["attempt_number"]) == ("succeeded", 1)
    assert smoke["outputs"]["stdout"] == "smoke ok\n"


async def test_a_pending_ticket_denies_with_the_plugins_reason(caller: Caller, ticket_api: str) -> None:
    environment = await _prepare(caller, _change_gate("CHG-2"), SMOKE, instances=_ticket_instance(ticket_api))

    promotion, run = await _promote(caller, environment)

    assert promotion["status"] == "rejected"
    change = _gate(promotion["decision_record"], "change")
    assert change["status"] == "fail"
    assert change["reason_codes"] == ["CHANGE_TICKET_NOT_APPROVED", "GATE_PLUGIN_DENIED"]
    assert _step(run, "smoke")["status"] == "skipped"


@pytest.mark.parametrize(
    ("plugin", "code"),
    [
        ("gate-crashes", "PLUGIN_CRASHED"),
        ("gate-spins", "PLUGIN_TIMEOUT"),
        ("gate-floods", "PLUGIN_ANSWER_TOO_LARGE"),
        ("gate-garbles", "PLUGIN_PROTOCOL_ERROR"),
    ],
)
async def test_a_misbehaving_gate_plugin_denies_and_every_service_stays_up(
    caller: Caller, stack: Stack, ticket_api: str, plugin: str, code: str
) -> None:
    gate = {"type": "plugin", "name": "bad", "config": {"plugin": plugin}}
    environment = await _prepare(caller, gate, SMOKE)

    promotion, run = await _promote(caller, environment)

    assert promotion["status"] == "rejected"
    bad = _gate(promotion["decision_record"], "bad")
    assert bad["status"] == "error"
    assert bad["reason_codes"] == sorted(["GATE_PLUGIN_FAILED", code])
    assert code in promotion["decision_record"]["reasons"]
    assert run["status"] == "failed"
    assert _step(run, "smoke")["status"] == "skipped"
    # Every service still answers: another tenant's promotion with a well-behaved gate and step goes through.
    other = caller.other_tenant()
    prepared = await _prepare(other, _change_gate("CHG-1"), SMOKE, instances=_ticket_instance(ticket_api))
    allowed, good_run = await _promote(other, prepared)
    assert allowed["decision_record"]["result"] == "allow"
    assert good_run["status"] == "succeeded"


async def test_a_crashing_step_plugin_is_retried_as_its_step_says(caller: Caller, ticket_api: str) -> None:
    environment = await _prepare(
        caller, _change_gate("CHG-1"), {"plugin": "step-crashes"}, instances=_ticket_instance(ticket_api)
    )

    promotion, run = await _promote(caller, environment)

    assert promotion["decision_record"]["result"] == "allow"
    assert run["status"] == "failed"
    smoke = _step(run, "smoke")
    assert (smoke["status"], smoke["attempt_number"]) == ("failed", 2)
    assert "exit code 3" in smoke["error"]


async def test_a_plugin_gate_is_checked_when_the_environment_is_saved(caller: Caller, ticket_api: str) -> None:
    await _enable(caller, "change-ticket", {"url": ticket_api})
    await _enable(caller, "smoke-test")
    # Another tenant enabled gate-counts: this tenant cannot use it.
    await _enable(caller.other_tenant(), "gate-counts")
    cases = [
        ({"plugin": "nope"}, 422, "GATE_PLUGIN_NOT_ENABLED", "has no plugin instance"),
        ({"plugin": "gate-counts"}, 422, "GATE_PLUGIN_NOT_ENABLED", "has no plugin instance"),
        ({"plugin": "smoke-test", "config": {"command": ["/bin/true"]}}, 422, "GATE_PLUGIN_NOT_ENABLED", "no plugin"),
        (
            {"plugin": "change-ticket", "config": {"url": "file:///etc/passwd"}},
            400,
            "GATE_CONFIG_INVALID",
            "does not fit",
        ),
    ]
    for config, status, code, words in cases:
        reply = await caller.command(
            c.CREATE_ENVIRONMENT,
            c.CreateEnvironment,
            name="prod",
            order_index=1,
            config={"gates": [{"type": "plugin", "name": "x", "config": config}]},
        )
        assert not reply.ok
        assert (reply.error.status, reply.error.code) == (status, code), reply.error
        assert words in reply.error.detail
    listed = await caller.query(c.LIST_ENVIRONMENTS, c.ListEnvironments)
    assert listed.data["items"] == []


async def test_a_plugin_disabled_after_the_environment_was_saved_denies(caller: Caller, ticket_api: str) -> None:
    environment = await _prepare(caller, _change_gate("CHG-1"), SMOKE, instances=_ticket_instance(ticket_api))
    listed = await caller.query(i.LIST_PLUGIN_INSTANCES, i.ListPluginInstances)
    [instance] = [x for x in listed.data["items"] if x["plugin_id"] == "change-ticket"]
    disabled = await caller.command(
        i.UPDATE_PLUGIN_INSTANCE, i.UpdatePluginInstance, instance_id=instance["id"], enabled=False
    )
    assert disabled.ok, disabled.error
    # The environment keeps working (a rename is not refused), but its gates cannot be saved again as they are.
    renamed = await caller.command(
        c.UPDATE_ENVIRONMENT, c.UpdateEnvironment, environment_id=environment["id"], display_name="Production"
    )
    assert renamed.ok, renamed.error
    resaved = await caller.command(
        c.UPDATE_ENVIRONMENT,
        c.UpdateEnvironment,
        environment_id=environment["id"],
        config={"gates": [_change_gate("CHG-1")]},
    )
    assert resaved.error is not None and resaved.error.code == "GATE_PLUGIN_NOT_ENABLED", resaved.error

    promotion, run = await _promote(caller, environment)

    assert promotion["status"] == "rejected"
    change = _gate(promotion["decision_record"], "change")
    assert change["status"] == "error"
    assert change["reason_codes"] == ["GATE_PLUGIN_FAILED", "PLUGIN_NOT_ENABLED"]
    assert "disabled for this tenant" in change["message"]
    assert _step(run, "smoke")["status"] == "skipped"


async def test_a_gate_plugin_is_asked_once_per_evaluation(caller: Caller, tmp_path: Path) -> None:
    environment = await _prepare(
        caller, {"type": "plugin", "name": "count", "config": {"plugin": "gate-counts"}}, SMOKE
    )

    promotion, _ = await _promote(caller, environment)

    assert _gate(promotion["decision_record"], "count")["status"] == "pass"
    # Asked before the promotion's row is locked, and that verdict is the one used under the lock.
    assert (tmp_path / "gate-counts" / "calls").read_text() == "call\n"
