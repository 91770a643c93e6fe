"""Promotions through the public API with every service running as a process: gates, approvals with
separation of duties, freeze windows and overrides, ordering, crash safety, and the evidence each
decision leaves behind. The environments here have no targets: an approved promotion's deployment job ends
at once and the promotion is deployed (the deployment end-to-end tests bring real targets)."""

from __future__ import annotations

import asyncio
import itertools
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nats.aio.client import Client

from stella.contracts.canonical import content_hash

from .conftest import Stack

pytestmark = pytest.mark.e2e

DIGESTS = {"api": "sha256:" + "a" * 64, "web": "sha256:" + "b" * 64}
DECIDED = {"deployed", "rejected", "cancelled", "failed", "rolled_back"}


async def _release(stack: Stack, name: str) -> str:
    """A ready release of two components pinned by digest."""
    for component in DIGESTS:
        status, body, _ = await stack.call(
            "POST",
            "/api/v1/components",
            json={
                "name": component,
                "image_repository": f"registry.invalid/shop/{component}",
                "versioning_strategy": {"resolve": "version-map"},
            },
        )
        assert status in (201, 409), body
    status, release, _ = await stack.call(
        "POST",
        "/api/v1/releases",
        json={"name": name, "components": [{"component": c, "digest": d} for c, d in DIGESTS.items()]},
    )
    assert status == 201, release
    status, ready, _ = await stack.call("POST", f"/api/v1/releases/{release['id']}/ready")
    assert status == 200, ready
    return release["id"]


async def _environment(stack: Stack, name: str, order: int, **fields: Any) -> str:
    status, env, _ = await stack.call(
        "POST", "/api/v1/environments", json={"name": name, "order_index": order, **fields}
    )
    assert status == 201, env
    return env["id"]


async def _promote(stack: Stack, release: str, env: str, *, token: str | None = None) -> dict[str, Any]:
    status, promotion, _ = await stack.call(
        "POST",
        "/api/v1/promotions",
        token=token,
        json={"release_id": release, "target_environment_id": env, "reason": "ship it"},
    )
    assert status == 201, promotion
    return promotion


async def _settled(stack: Stack, promotion_id: str, *, expect: str, timeout: float = 30) -> dict[str, Any]:
    body = await stack.until(
        f"/api/v1/promotions/{promotion_id}", lambda p: p["status"] == expect or p["status"] in DECIDED, timeout=timeout
    )
    assert body["status"] == expect, body
    return body


async def _verified_packet(stack: Stack, promotion_id: str, packet_type: str = "release_decision") -> dict[str, Any]:
    """The promotion's packet of ``packet_type``, once stored, verified through the API."""
    listing = await stack.until(
        f"/api/v1/promotions/{promotion_id}/evidence",
        lambda b: any(p["packet_type"] == packet_type for p in b["items"]),
    )
    [packet] = [p for p in listing["items"] if p["packet_type"] == packet_type]
    status, verdict, _ = await stack.call("POST", f"/api/v1/evidence/{packet['id']}/verify")
    assert status == 200, verdict
    assert verdict["valid"], verdict
    return packet


async def test_promotion_through_environments_with_approvals_and_evidence(full_stack: Stack) -> None:
    stack = full_stack
    dev = await _environment(stack, "dev", 0)
    staging = await _environment(stack, "staging", 1)
    prod = await _environment(stack, "prod", 2, required_approvals=2, require_sod=True)
    release = await _release(stack, "shop-1")
    alice, alice_token = await stack.principal("alice", ["approver"], display_name="Alice Example")
    bob, bob_token = await stack.principal("bob", ["approver"])

    # Ordering: prod before staging is refused, naming what must come first.
    status, body, _ = await stack.call(
        "POST", "/api/v1/promotions", json={"release_id": release, "target_environment_id": prod}
    )
    assert status == 422, body
    assert body["code"] == "PROM_ORDER_VIOLATION"
    assert "staging" in body["detail"]

    # dev: no approvals needed -> approved, every gate passed; no targets -> deployed at once.
    to_dev = await _promote(stack, release, dev)
    assert to_dev["status"] == "pending_gate"
    approved = await _settled(stack, to_dev["id"], expect="deployed")
    assert approved["status_message"] == "the environment has no targets: nothing to deploy"
    assert approved["deployment_job_id"]
    status, decision, _ = await stack.call("GET", f"/api/v1/promotions/{to_dev['id']}/decision")
    assert status == 200, decision
    record = decision["record"]
    assert record["result"] == "allow"
    assert record["gates"]
    assert all(g["status"] == "pass" for g in record["gates"]), record["gates"]
    assert record["inputs_hash"].startswith("sha256:")
    assert approved["decision_record"] == record
    dev_packet = await _verified_packet(stack, to_dev["id"])
    assert dev_packet["content"]["decision"]["result"] == "allow"
    digests = {c["digest"] for c in dev_packet["content"]["release"]["components"]}
    assert digests == set(DIGESTS.values())
    deployment = await _verified_packet(stack, to_dev["id"], "deployment")
    assert deployment["content"]["execution"]["deployment_job_id"] == approved["deployment_job_id"]
    assert deployment["content"]["execution"]["outcome"] == "succeeded"

    await _settled(stack, (await _promote(stack, release, staging))["id"], expect="deployed")

    # prod: two distinct approvers, the requester may not approve.
    to_prod = await _promote(stack, release, prod)
    await _settled(stack, to_prod["id"], expect="pending_approval")
    status, body, _ = await stack.call("POST", f"/api/v1/promotions/{to_prod['id']}/approve", json={"comment": "mine"})
    assert status == 422, body
    assert body["code"] == "PROM_SOD_VIOLATION"
    status, approvals, _ = await stack.call("GET", f"/api/v1/promotions/{to_prod['id']}/approvals")
    assert approvals["votes"] == []

    status, body, _ = await stack.call(
        "POST", f"/api/v1/promotions/{to_prod['id']}/approve", token=alice_token, json={"comment": "tests green"}
    )
    assert status == 200, body
    status, body, _ = await stack.call(
        "POST", f"/api/v1/promotions/{to_prod['id']}/approve", token=alice_token, json={"comment": "again"}
    )
    assert status == 409, body
    status, still, _ = await stack.call("GET", f"/api/v1/promotions/{to_prod['id']}")
    assert still["status"] == "pending_approval"

    status, body, _ = await stack.call(
        "POST", f"/api/v1/promotions/{to_prod['id']}/approve", token=bob_token, json={"comment": "lgtm"}
    )
    assert status == 200, body
    final = await _settled(stack, to_prod["id"], expect="deployed")
    approvers = {a["approver"] for a in final["decision_record"]["approvals"]}
    assert alice in approvers
    assert len(approvers) == 2

    prod_packet = await _verified_packet(stack, to_prod["id"])
    actors = prod_packet["content"]["actors"]
    assert {a["id"] for a in actors["approvers"]} == approvers
    assert all(a["comment"] for a in actors["approvers"])
    # Principals by id, name and display name, as the gateway authenticated them when they acted.
    assert {(a["id"], a["name"], a["display_name"]) for a in actors["approvers"]} == {
        (alice, "alice", "Alice Example"),
        (bob, "bob", None),
    }
    assert actors["requester"]["name"] is not None and actors["requester"]["id"] == to_prod["requested_by"]
    # The packet carries what the gates saw: its inputs_hash recomputes from the packet alone.
    decision = prod_packet["content"]["decision"]
    assert decision["inputs"]["gates"], decision
    clock_and_inputs = {"clock": decision["evaluated_at"], "inputs": decision["inputs"]}
    assert content_hash(clock_and_inputs) == decision["inputs_hash"]

    # A deployed promotion is final: it can no longer be cancelled (reference §3).
    status, body, _ = await stack.call("POST", f"/api/v1/promotions/{to_prod['id']}/cancel", json={})
    assert status == 409, body
    assert body["code"] == "PROM_ALREADY_TERMINAL"


async def test_an_eligible_rejection_rejects_and_leaves_evidence(full_stack: Stack) -> None:
    stack = full_stack
    prod = await _environment(stack, "prod", 0, required_approvals=2, require_sod=True)
    release = await _release(stack, "shop-2")
    _, carol_token = await stack.principal("carol", ["approver"])
    _, viewer_token = await stack.principal("vic", ["viewer"])
    promotion = await _promote(stack, release, prod)
    await _settled(stack, promotion["id"], expect="pending_approval")

    status, body, _ = await stack.call(
        "POST", f"/api/v1/promotions/{promotion['id']}/approve", token=viewer_token, json={}
    )
    assert status == 403, body
    status, body, _ = await stack.call(
        "POST", f"/api/v1/promotions/{promotion['id']}/reject", token=carol_token, json={"comment": "CVE open"}
    )
    assert status == 200, body
    rejected = await _settled(stack, promotion["id"], expect="rejected")
    assert rejected["decision_record"]["result"] == "deny"
    status, body, _ = await stack.call(
        "POST", f"/api/v1/promotions/{promotion['id']}/approve", token=carol_token, json={}
    )
    assert status == 409, body
    packet = await _verified_packet(stack, promotion["id"])
    assert packet["content"]["decision"]["result"] == "deny"


async def test_freeze_window_holds_a_promotion_until_an_exception_overrides_it(full_stack: Stack) -> None:
    stack = full_stack
    dave, dave_token = await stack.principal("dave", ["developer"])
    _, erin_token = await stack.principal("erin", ["developer"])
    prod = await _environment(stack, "prod", 0)
    now = datetime.now(UTC)
    status, window, _ = await stack.call(
        "POST",
        f"/api/v1/environments/{prod}/freeze-windows",
        json={
            "kind": "deny",
            "start": (now - timedelta(minutes=5)).isoformat(),
            "end": (now + timedelta(hours=2)).isoformat(),
            "reason": "Black Friday change freeze",
            "exceptions": [dave],
        },
    )
    assert status == 201, window
    status, state, _ = await stack.call("GET", f"/api/v1/environments/{prod}/state")
    assert state["closed"] is True
    assert "Black Friday" in state["reason"]

    release = await _release(stack, "shop-3")
    promotion = await _promote(stack, release, prod)
    held = await stack.until(
        f"/api/v1/promotions/{promotion['id']}", lambda p: p["decision_record"] is not None, timeout=30
    )
    assert held["status"] == "pending_gate"
    assert held["next_evaluation_at"] is not None
    assert "Black Friday change freeze" in str(held["decision_record"]["gates"])

    status, body, _ = await stack.call(
        "POST", f"/api/v1/promotions/{promotion['id']}/override-freeze", token=erin_token, json={"reason": "hotfix"}
    )
    assert 400 <= status < 500, body
    status, body, _ = await stack.call(
        "POST",
        f"/api/v1/promotions/{promotion['id']}/override-freeze",
        token=dave_token,
        json={"reason": "payment hotfix"},
    )
    assert status == 200, body
    done = await _settled(stack, promotion["id"], expect="deployed")
    record = done["decision_record"]
    freeze = [g for g in record["gates"] if g["type"] == "freeze-window"]
    assert freeze
    assert freeze[0]["status"] == "overridden"
    assert "payment hotfix" in str(record)
    packet = await _verified_packet(stack, promotion["id"])
    assert "payment hotfix" in str(packet["content"]["decision"])


@pytest.mark.parametrize("victim", ["workflow", "promotion"])
async def test_a_killed_service_mid_run_still_ends_in_the_right_state(
    full_stack: Stack, nats: Client, victim: str
) -> None:
    stack = full_stack
    prod = await _environment(stack, "prod", 0, required_approvals=1)
    release = await _release(stack, f"shop-{victim}")
    _, alice_token = await stack.principal("alice", ["approver"])
    promotion = await _promote(stack, release, prod)
    await _settled(stack, promotion["id"], expect="pending_approval")
    # pending_approval means the approval request is open: a vote is accepted from this moment.
    stack.kill(victim)
    status, body, _ = await stack.call(
        "POST", f"/api/v1/promotions/{promotion['id']}/approve", token=alice_token, json={"comment": "go"}
    )
    assert status == 200, body
    stack.start(victim)
    await stack.wait_service(victim, nats)
    done = await _settled(stack, promotion["id"], expect="deployed", timeout=60)
    assert len(done["decision_record"]["approvals"]) == 1
    # Every step ran once in effect: one run, each step succeeded on its first attempt, one packet.
    status, run, _ = await stack.call("GET", f"/api/v1/workflow-runs/{done['workflow_run_id']}")
    run = await stack.until(f"/api/v1/workflow-runs/{done['workflow_run_id']}", lambda r: r["status"] == "succeeded")
    assert {s["node_id"]: s["attempt_number"] for s in run["steps"]} == {
        "gates": 1,
        "approval": 1,
        "deploy": 1,
        "health-check": 1,
        "evidence": 1,
    }
    await _verified_packet(stack, promotion["id"])


async def test_bad_input_gets_a_specific_error(full_stack: Stack) -> None:
    stack = full_stack
    env = await _environment(stack, "dev", 0)
    cases = [
        ("POST", "/api/v1/environments", {"name": "x", "order_index": 1, "required_approvals": -1}, 400),
        ("GET", f"/api/v1/environments/{uuid.uuid4()}", None, 404),
        (
            "POST",
            f"/api/v1/environments/{env}/freeze-windows",
            {"rrule": "FREQ=SOMETIMES", "duration_s": 60, "reason": "x"},
            400,
        ),
        (
            "POST",
            f"/api/v1/environments/{env}/freeze-windows",
            {"rrule": "FREQ=WEEKLY;BYDAY=FR;BYHOUR=16", "duration_s": 3600, "timezone": "Mars/Olympus", "reason": "x"},
            400,
        ),
        ("POST", "/api/v1/promotions", {"release_id": str(uuid.uuid4()), "target_environment_id": env}, 404),
        ("GET", f"/api/v1/promotions/{uuid.uuid4()}", None, 404),
        (
            "POST",
            "/api/v1/workflow-templates",
            {
                "name": "loop",
                "nodes": [{"id": "a", "type": "wait"}, {"id": "b", "type": "wait"}],
                "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "a"}],
            },
            400,
        ),
    ]
    for method, path, payload, expected in cases:
        status, body, headers = await stack.call(method, path, json=payload)
        assert status == expected, (path, payload, body)
        assert headers["Content-Type"].startswith("application/problem+json")
    status, windows, _ = await stack.call("GET", f"/api/v1/environments/{env}/freeze-windows")
    assert windows["items"] == []


async def test_evidence_follows_a_decision_made_while_the_evidence_service_is_down(
    full_stack: Stack, nats: Client, tmp_path
) -> None:
    """The decision is reported at once; its packet is guaranteed to follow (stored when the service is back)
    and the exported bundle verifies offline with nothing but the bundle."""
    stack = full_stack
    dev = await _environment(stack, "dev", 0)
    release = await _release(stack, "shop-evidence")
    stack.kill("evidence")
    promotion = await _promote(stack, release, dev)
    await _settled(stack, promotion["id"], expect="deployed")
    status, listing, _ = await stack.call("GET", f"/api/v1/promotions/{promotion['id']}/evidence")
    assert status == 503 or listing["items"] == [], listing

    stack.start("evidence")
    await stack.wait_service("evidence", nats)
    packet = await _verified_packet(stack, promotion["id"])
    assert packet["promotion_id"] == promotion["id"]

    assert stack.http is not None
    async with stack.http.get(
        f"{stack.base}/api/v1/evidence/export", headers={"Authorization": f"Bearer {stack.token}"}
    ) as resp:
        assert resp.status == 200, await resp.text()
        bundle = tmp_path / "evidence.tar.gz"
        bundle.write_bytes(await resp.read())
    verified = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "stella.evidence.verify", str(bundle), "--trust-bundle-keys", "--replay"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # Every decision the services took replays identically from the inputs its packet carries.
    assert re.search(r"note: [1-9][0-9]* decision\(s\) replayed from their inputs", verified.stdout), verified.stdout


PROMOTION_INPUTS = {
    name: {"required": False}
    for name in (
        "promotion_id",
        "release_id",
        "environment_id",
        "requested_by",
        "approval_required",
        "required_approvals",
        "require_sod",
        "approver_groups",
        "approval_timeout_s",
    )
}


async def _template(stack: Stack, name: str, steps: list[str], **fields: Any) -> dict[str, Any]:
    types = {"gates": "gate", "approval": "approval", "evidence": "evidence", "pause": "wait"}
    body = {
        "name": name,
        "nodes": [
            {"id": step, "type": types[step], **({"config": {"seconds": 1}} if step == "pause" else {})}
            for step in steps
        ],
        "edges": [{"from": a, "to": b} for a, b in itertools.pairwise(steps)],
        **fields,
    }
    status, template, _ = await stack.call("POST", "/api/v1/workflow-templates", json=body)
    assert status == 201, template
    return template


async def test_no_promotion_waits_on_a_workflow_that_cannot_decide_it(full_stack: Stack) -> None:
    """An environment cannot name a template its promotions cannot run; a run that ends without deciding a
    promotion (its template lost the approval step since) fails the promotion with the reason."""
    stack = full_stack
    await _template(stack, "bare", ["pause"])
    status, refused, _ = await stack.call(
        "POST",
        "/api/v1/environments",
        json={"name": "dev", "order_index": 0, "promotion_policy": {"workflow_template": "bare"}},
    )
    assert (status, refused["code"]) == (422, "ENV_WORKFLOW_TEMPLATE_UNSUITABLE"), refused
    status, refused, _ = await stack.call(
        "POST",
        "/api/v1/environments",
        json={"name": "dev", "order_index": 0, "promotion_policy": {"workflow_template": "nope"}},
    )
    assert (status, refused["code"]) == (422, "ENV_WORKFLOW_TEMPLATE_UNKNOWN"), refused
    status, refused, _ = await stack.call(
        "POST", "/api/v1/workflow-templates", json={"name": "careless", "nodes": [{"id": "gates", "type": "gate"}]}
    )
    assert (status, refused["code"]) == (400, "WF_PROMOTION_TEMPLATE_INCOMPLETE"), refused

    await _template(stack, "custom", ["gates", "approval", "evidence"], inputs=PROMOTION_INPUTS)
    dev = await _environment(stack, "dev", 0, required_approvals=1, promotion_policy={"workflow_template": "custom"})
    # A later version drops the approval step; the environment still requires one approval.
    await _template(stack, "custom", ["gates", "pause"], inputs=PROMOTION_INPUTS)
    release = await _release(stack, "shop-no-approval-step")
    promotion = await _promote(stack, release, dev)
    assert "waiting for workflow run" in promotion["status_message"]
    failed = await stack.until(
        f"/api/v1/promotions/{promotion['id']}", lambda p: p["status"] not in ("pending_gate", "pending_approval")
    )
    assert failed["status"] == "failed", failed
    assert "finished without deciding the promotion" in failed["status_message"]
    assert failed["reason_codes"] == ["PROM_WORKFLOW_RUN_ENDED"]
