"""Steps the workflow service executes itself: ``http`` (allow-listed hosts, guarded addresses) and ``script``
(only through a step plugin the tenant enabled, isolated), on real Postgres and NATS, with the real
integration service owning the plugin instances."""

from __future__ import annotations

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
from stella.contracts import workflow as c
from stella.testing.plugins import enable_plugin, plugin_service

from .conftest import Deployment, Harness, start_harness

EXAMPLE_PLUGINS = Path(__file__).parents[4] / "plugins"


def write_step_plugin(root: Path, plugin_id: str, body: str) -> None:
    """A step plugin that runs ``body`` after reading its request (``request``; ``answer(result)`` replies)."""
    directory = root / plugin_id
    directory.mkdir(parents=True)
    manifest = {"id": plugin_id, "version": "1.0.0", "vendor": "Tests", "capabilities": ["step"], "entrypoint": "p.py"}
    (directory / "stella-plugin.json").write_text(json.dumps(manifest))
    prologue = (
        "import json, sys\n"
        "request = json.loads(sys.stdin.readline())\n"
        "def answer(result):\n"
        "    print(json.dumps({'jsonrpc': '2.0', 'id': request['id'], 'result': result}), flush=True)\n"
    )
    (directory / "p.py").write_text(prologue + body)


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A local HTTP endpoint recording what it receives; ``/status/<code>`` answers that code."""
    received: list[dict[str, Any]] = []

    async def record(request: web.Request) -> web.Response:
        received.append({"path": request.path, "headers": dict(request.headers), "body": await request.text()})
        status = int(request.match_info.get("code", 201))
        return web.json_response({"accepted": True}, status=status)

    app = web.Application()
    app.router.add_post("/hooks", record)
    app.router.add_get("/status/{code}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", received
    await runner.cleanup()


@pytest_asyncio.fixture
async def plugged(deployment: Deployment, nats: Client, tmp_path: Path) -> AsyncIterator[Harness]:
    """A workflow instance with the example plugins and two misbehaving ones installed, and 127.0.0.1 allowed."""
    write_step_plugin(tmp_path, "crashes", "sys.exit(3)\n")
    write_step_plugin(tmp_path, "hangs", "import time\ntime.sleep(3600)\n")
    plugin_path = f"{EXAMPLE_PLUGINS}:{tmp_path}"
    deployment.overrides = {
        "plugin_path": plugin_path,
        "plugin_timeout_s": 2.0,
        "http_allowed_hosts": "127.0.0.1",
        "http_allowed_networks": "127.0.0.1/32",
    }
    async with plugin_service(deployment.dsn, deployment.nats_url, deployment.namespace, plugin_path):
        async for harness in start_harness(deployment, nats):
            for source, plugin_id in (("smoke_test", "smoke-test"), ("crashes", "crashes"), ("hangs", "hangs")):
                await enable_plugin(harness, source, plugin_id)
            yield harness


async def _finished_run(harness: Harness, run_id: str) -> dict[str, Any]:
    await harness.finished(run_id)
    return await harness.get_run(run_id)


def _step(run: dict[str, Any], node_id: str) -> dict[str, Any]:
    return next(s for s in run["steps"] if s["node_id"] == node_id)


async def test_an_http_step_sends_its_templated_body_and_checks_the_status(
    plugged: Harness, receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = receiver
    node = {
        "id": "hook",
        "type": "http",
        "timeout_s": 30,
        "config": {
            "url": f"{url}/hooks",
            "method": "POST",
            "headers": {"X-Release": "{{ inputs.release }}"},
            "body": {
                "release": "{{ inputs.release }}",
                "count": "{{ inputs.count }}",
                "text": "v={{ inputs.release }}",
            },
            "expected_status": 201,
        },
    }
    inputs = {"release": {"required": True}, "count": {"required": True}}
    assert (await plugged.save_template("hook", [node], inputs=inputs)).ok

    run = await plugged.start_run("hook", inputs={"release": "r-1", "count": 3})
    done = await _finished_run(plugged, run["id"])

    assert done["status"] == "succeeded"
    hook = _step(done, "hook")
    assert hook["outputs"]["status"] == 201
    assert hook["outputs"]["json"] == {"accepted": True}
    [request] = received
    assert json.loads(request["body"]) == {"release": "r-1", "count": 3, "text": "v=r-1"}
    assert request["headers"]["X-Release"] == "r-1"
    assert request["headers"]["Idempotency-Key"] == f"wf/{run['id']}/hook/1"


async def test_an_unexpected_status_fails_the_http_step_after_its_retries(
    plugged: Harness, receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = receiver
    node = {
        "id": "probe",
        "type": "http",
        "timeout_s": 30,
        "retry": {"max_attempts": 2},
        "config": {"url": f"{url}/status/503"},
    }
    assert (await plugged.save_template("probe", [node])).ok

    done = await _finished_run(plugged, (await plugged.start_run("probe"))["id"])

    assert done["status"] == "failed"
    probe = _step(done, "probe")
    assert probe["attempt_number"] == 2
    assert "answered 503, expected 200" in probe["error"]
    assert len(received) == 2


INVALID = (400, "WF_INVALID_STEP_CONFIG")
NOT_ENABLED = (422, "WF_STEP_PLUGIN_NOT_ENABLED")


@pytest.mark.parametrize(
    ("node", "error", "words"),
    [
        (
            {"type": "http", "config": {"url": "https://elsewhere.example/x"}},
            INVALID,
            "not on the operator's allow-list",
        ),
        ({"type": "http", "config": {"url": "ftp://127.0.0.1/x"}}, INVALID, "http or https URL"),
        ({"type": "http", "config": {"url": "http://127.0.0.1/x", "method": "BREW"}}, INVALID, "config.method"),
        ({"type": "http", "config": {"url": "http://127.0.0.1/x"}, "timeout_s": None}, INVALID, "needs timeout_s"),
        ({"type": "script", "config": {"plugin": "nope"}}, NOT_ENABLED, "has no plugin instance"),
        (
            {"type": "script", "config": {"plugin": "change-ticket", "config": {"url": "http://x"}}},
            NOT_ENABLED,
            "names none",
        ),
        (
            {"type": "script", "config": {"plugin": "smoke-test", "config": {"command": "rm -rf /"}}},
            INVALID,
            "does not fit plugin",
        ),
        ({"type": "script", "config": {"command": ["/bin/true"]}}, INVALID, "unknown field"),
    ],
)
async def test_a_step_that_cannot_work_is_refused_when_the_template_is_saved(
    plugged: Harness, node: dict[str, Any], error: tuple[int, str], words: str
) -> None:
    reply = await plugged.save_template("refused", [{"id": "s", "timeout_s": 30, **node}])

    assert not reply.ok
    assert (reply.error.status, reply.error.code) == error
    assert words in reply.error.detail
    missing = await plugged.query(c.GET_TEMPLATE, c.GetTemplate, name="refused")
    assert missing.error.status == 404


async def test_the_address_guard_stops_an_http_step_to_a_network_the_operator_did_not_allow(
    deployment: Deployment, nats: Client, receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = receiver
    deployment.overrides = {"http_allowed_hosts": "127.0.0.1"}
    async for harness in start_harness(deployment, nats):
        node = {"id": "hook", "type": "http", "timeout_s": 30, "config": {"url": f"{url}/hooks", "method": "POST"}}
        assert (await harness.save_template("guarded", [node])).ok
        done = await _finished_run(harness, (await harness.start_run("guarded"))["id"])
        assert done["status"] == "failed"
        assert "STELLA_WORKFLOW_HTTP_ALLOWED_NETWORKS" in _step(done, "hook")["error"]
    assert received == []


async def test_a_script_step_runs_its_plugin_and_keeps_its_output(plugged: Harness) -> None:
    node = {
        "id": "smoke",
        "type": "script",
        "timeout_s": 60,
        "config": {"plugin": "smoke-test", "config": {"command": [sys.executable, "-c", "print('all good')"]}},
    }
    assert (await plugged.save_template("smoke", [node])).ok

    done = await _finished_run(plugged, (await plugged.start_run("smoke"))["id"])

    assert done["status"] == "succeeded"
    smoke = _step(done, "smoke")
    assert smoke["outputs"] == {"exit_code": 0, "stdout": "all good\n", "stderr": ""}
    assert "all good" in smoke["logs"]


@pytest.mark.parametrize(("plugin", "words"), [("crashes", "exit code 3"), ("hangs", "2 s wall-clock limit")])
async def test_a_misbehaving_step_plugin_fails_each_attempt_and_the_service_stays_up(
    plugged: Harness, plugin: str, words: str
) -> None:
    node = {"id": "bad", "type": "script", "timeout_s": 60, "retry": {"max_attempts": 2}, "config": {"plugin": plugin}}
    assert (await plugged.save_template(f"bad-{plugin}", [node])).ok

    run_id = (await plugged.start_run(f"bad-{plugin}"))["id"]
    done = await _finished_run(plugged, run_id)

    assert done["status"] == "failed"
    bad = _step(done, "bad")
    assert bad["attempt_number"] == 2
    assert words in bad["error"]
    failures = plugged.events_of(c.STEP_FAILED, run_id, node_id="bad")
    assert [(f["attempt"], f["will_retry"]) for f in failures] == [(1, True), (2, False)]
    # The service goes on: another run of a well-behaved step succeeds.
    good = {
        "id": "ok",
        "type": "script",
        "timeout_s": 60,
        "config": {"plugin": "smoke-test", "config": {"command": ["/bin/true"]}},
    }
    assert (await plugged.save_template(f"after-{plugin}", [good])).ok
    after = await _finished_run(plugged, (await plugged.start_run(f"after-{plugin}"))["id"])
    assert after["status"] == "succeeded"


async def test_a_step_plugin_the_tenant_has_not_enabled_cannot_be_used(plugged: Harness) -> None:
    node = {
        "id": "smoke",
        "type": "script",
        "timeout_s": 60,
        "config": {"plugin": "smoke-test", "config": {"command": ["/bin/true"]}},
    }
    other = plugged.other_tenant()
    refused = await other.command(c.SAVE_TEMPLATE, c.SaveTemplate, name="smoke", nodes=[node])
    assert refused.error is not None and refused.error.code == "WF_STEP_PLUGIN_NOT_ENABLED", refused.error

    # Saved while enabled, then disabled: the attempt fails (closed), with the reason.
    assert (await plugged.save_template("smoke", [node])).ok
    listed = await plugged.query(i.LIST_PLUGIN_INSTANCES, i.ListPluginInstances)
    [instance] = [x for x in listed.data["items"] if x["plugin_id"] == "smoke-test"]
    off = await plugged.command(
        i.UPDATE_PLUGIN_INSTANCE, i.UpdatePluginInstance, instance_id=instance["id"], enabled=False
    )
    assert off.ok, off.error
    done = await _finished_run(plugged, (await plugged.start_run("smoke"))["id"])
    assert done["status"] == "failed"
    smoke = _step(done, "smoke")
    assert smoke["outputs"] == {"error_code": "PLUGIN_NOT_ENABLED"}
    assert "disabled for this tenant" in smoke["error"]


async def test_a_script_step_receives_its_instances_config_under_its_own(plugged: Harness) -> None:
    listed = await plugged.query(i.LIST_PLUGIN_INSTANCES, i.ListPluginInstances)
    [instance] = [x for x in listed.data["items"] if x["plugin_id"] == "smoke-test"]
    changed = await plugged.command(
        i.UPDATE_PLUGIN_INSTANCE,
        i.UpdatePluginInstance,
        instance_id=instance["id"],
        config={"command": [sys.executable, "-c", "print('from the instance')"]},
    )
    assert changed.ok, changed.error
    node = {"id": "smoke", "type": "script", "timeout_s": 60, "config": {"plugin": "smoke-test"}}
    assert (await plugged.save_template("defaults", [node])).ok

    done = await _finished_run(plugged, (await plugged.start_run("defaults"))["id"])

    assert done["status"] == "succeeded", done
    assert _step(done, "smoke")["outputs"]["stdout"] == "from the instance\n"
