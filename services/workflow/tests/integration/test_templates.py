"""Workflow templates over real NATS and Postgres: validation on save, versions, built-ins, tenant isolation."""

from __future__ import annotations

import pytest

from stella.contracts import workflow as c

from .conftest import Harness

GATE = {"id": "check", "type": "gate"}


async def _listed(harness: Harness, page_size: int = 50) -> list[tuple[str, int]]:
    items: list[tuple[str, int]] = []
    token = None
    while True:
        reply = await harness.query(
            c.LIST_TEMPLATES, c.ListTemplates, page={"page_size": page_size, "page_token": token}
        )
        assert reply.ok, reply.error
        items += [(t["name"], t["version"]) for t in reply.data["items"]]
        token = reply.data["next_page_token"]
        if token is None:
            return items


@pytest.mark.parametrize(
    ("nodes", "edges", "code", "words"),
    [
        ([{"id": "a", "type": "teleport"}], [], "WF_UNKNOWN_STEP_TYPE", "teleport"),
        (
            [{"id": "a", "type": "gate"}, {"id": "b", "type": "gate"}, {"id": "d", "type": "gate"}],
            [("a", "b"), ("b", "d"), ("d", "a")],
            "WF_CYCLE",
            "a -> b -> d -> a",
        ),
        ([{"id": "a", "type": "gate"}], [("a", "ghost")], "WF_DANGLING_EDGE", "ghost"),
        ([{"id": "a", "type": "gate"}, {"id": "a", "type": "gate"}], [], "WF_DUPLICATE_NODE", "'a'"),
        ([{"id": "a", "type": "gate", "when": "inputs.nope"}], [], "WF_INVALID_CONDITION", "nope"),
        ([{"id": "a", "type": "wait", "config": {}}], [], "WF_INVALID_STEP_CONFIG", "seconds"),
    ],
)
async def test_an_invalid_template_is_a_400_and_stores_nothing(
    harness: Harness, nodes: list, edges: list, code: str, words: str
) -> None:
    reply = await harness.save_template("broken", nodes, edges)

    assert not reply.ok
    assert (reply.error.code, reply.error.status) == (code, 400)
    assert words in reply.error.detail
    assert await _listed(harness) == [("standard-promotion", 2)]
    missing = await harness.query(c.GET_TEMPLATE, c.GetTemplate, name="broken")
    assert (missing.error.code, missing.error.status) == ("WF_TEMPLATE_NOT_FOUND", 404)


async def test_versions_increase_per_tenant_and_name(harness: Harness) -> None:
    promotion_inputs = {name: {"required": False} for name in c.PROMOTION_RUN_INPUTS}
    first = await harness.save_template(
        "deploy-flow", [GATE], inputs={**promotion_inputs, "env": {"required": False, "default": "dev"}}
    )
    second = await harness.save_template(
        "deploy-flow", [GATE, {"id": "proof", "type": "evidence"}], [("check", "proof")]
    )
    other_name = await harness.save_template("audit", [GATE])
    other_tenant = await harness.other_tenant().save_template("deploy-flow", [GATE])

    assert [r.data["version"] for r in (first, second, other_name, other_tenant)] == [1, 2, 1, 1]
    assert first.data["inputs"]["env"] == {"required": False, "default": "dev", "description": ""}
    assert first.data["is_builtin"] is False
    assert first.data["tenant_id"] == str(harness.tenant_id)
    latest = await harness.query(c.GET_TEMPLATE, c.GetTemplate, name="deploy-flow")
    assert latest.data == second.data
    pinned = await harness.query(c.GET_TEMPLATE, c.GetTemplate, name="deploy-flow", version=1)
    assert pinned.data == first.data
    assert [n["id"] for n in pinned.data["nodes"]] == ["check"]


async def test_edges_are_answered_as_from_and_to_as_the_api_writes_them(harness: Harness) -> None:
    saved = await harness.save_template(
        "fan-out", [GATE, {"id": "proof", "type": "evidence"}, {"id": "tell", "type": "gate"}], [("check", "proof")]
    )
    read = await harness.query(c.GET_TEMPLATE, c.GetTemplate, name="fan-out")
    listed = await harness.query(c.LIST_TEMPLATES, c.ListTemplates)

    assert saved.ok, saved.error
    [in_list] = [t for t in listed.data["items"] if t["name"] == "fan-out"]
    for template in (saved.data, read.data, in_list):
        assert template["edges"] == [{"from": "check", "to": "proof"}]
    # The answer reads back as the contract's view.
    assert c.TemplateView.model_validate(read.data).edges == [c.EdgeSpec(source="check", target="proof")]


async def test_listing_shows_builtins_and_each_tenant_template_once_at_its_latest_version(harness: Harness) -> None:
    for name in ("zeta", "alpha", "alpha", "mid"):
        assert (await harness.save_template(name, [GATE])).ok
    await harness.other_tenant().save_template("secret", [GATE])

    expected = [("alpha", 2), ("mid", 1), ("standard-promotion", 2), ("zeta", 1)]
    assert await _listed(harness) == expected
    assert await _listed(harness, page_size=1) == expected
    assert await _listed(harness.other_tenant()) == [("standard-promotion", 2)]


async def test_the_builtin_template_is_readable_and_its_name_reserved(harness: Harness) -> None:
    reply = await harness.query(c.GET_TEMPLATE, c.GetTemplate, name="standard-promotion")

    assert reply.ok, reply.error
    assert reply.data["is_builtin"] is True
    assert reply.data["tenant_id"] is None
    assert reply.data["version"] == 2
    assert [n["id"] for n in reply.data["nodes"]] == ["gates", "approval", "deploy", "health-check", "evidence"]
    assert {"from": "approval", "to": "deploy"} in reply.data["edges"]
    assert {"from": "health-check", "to": "evidence"} in reply.data["edges"]
    assert reply.data["nodes"][1]["when"] == "inputs.approval_required"
    assert reply.data["nodes"][4]["run_on"] == "always"
    first = await harness.query(c.GET_TEMPLATE, c.GetTemplate, name="standard-promotion", version=1)
    assert [n["id"] for n in first.data["nodes"]] == ["gates", "approval", "evidence"]
    assert first.data["edges"] == [{"from": "gates", "to": "approval"}, {"from": "approval", "to": "evidence"}]
    assert {"promotion_id", "required_approvals", "approver_groups"} <= set(reply.data["inputs"])
    shadow = await harness.save_template("standard-promotion", [GATE])
    assert (shadow.error.code, shadow.error.status) == ("WF_TEMPLATE_NAME_RESERVED", 409)


async def test_another_tenants_template_cannot_be_read_or_run(harness: Harness) -> None:
    await harness.other_tenant().save_template("private", [GATE])

    read = await harness.query(c.GET_TEMPLATE, c.GetTemplate, name="private")
    run = await harness.command(c.START_RUN, c.StartRun, template_name="private")

    assert read.error.code == run.error.code == "WF_TEMPLATE_NOT_FOUND"
