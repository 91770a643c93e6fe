"""``deployment``, ``rollback`` and ``drift`` packets made from the deployment service's events, on real NATS and
Postgres: one packet per job (or drift record) however often the event arrives, each signed and chained, and an
exported bundle holding them verifies offline while a tampered one does not."""

from __future__ import annotations

import base64
import io
import json
import tarfile
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest_asyncio
from nats.aio.client import Client
from nats.aio.msg import Msg

from stella.contracts import deployment as d
from stella.contracts.envelope import ErrorDetail, Reply
from stella.contracts.evidence import EXPORT_BUNDLE, LIST_PACKETS, PACKET_CREATED, ExportBundle, ListPackets
from stella.contracts.release import GET_RELEASE, ReleaseView
from stella.evidence.app import EvidenceApp
from stella.testing.messaging import MessageCollector, collect_messages

from .conftest import T0, Caller, digest, eventually, published_keys, verify_offline

COMPONENTS = ("api", "web")


def release_view(release_id: uuid.UUID) -> ReleaseView:
    return ReleaseView(
        id=release_id,
        name="shop-2026.4",
        display_name="shop-2026.4",
        status="ready",
        components=[
            {
                "component_id": uuid.uuid5(release_id, name),
                "name": name,
                "image_repository": f"registry.example.com/shop/{name}",
                "digest": digest(f"new-{name}"),
                "tag": "2.0.0",
                "semver": "2.0.0",
            }
            for name in COMPONENTS
        ],
        source_ref={},
        created_by=None,
        created_at=T0,
        updated_at=T0,
        ready_at=T0,
        deprecated_at=None,
        deprecation_reason=None,
    )


@pytest_asyncio.fixture
async def releases(evidence_app: EvidenceApp, nats: Client) -> AsyncIterator[dict[uuid.UUID, ReleaseView]]:
    """The release service's ``get_release``, answered on real NATS for the releases put in the mapping."""
    known: dict[uuid.UUID, ReleaseView] = {}

    async def answer(msg: Msg) -> None:
        release_id = uuid.UUID(json.loads(msg.data)["release_id"])
        view = known.get(release_id)
        if view is None:
            reply = Reply.failure(ErrorDetail(code="REL_RELEASE_NOT_FOUND", status=404, title="not found"))
        else:
            reply = Reply.success(view.model_dump(mode="json"))
        await msg.respond(reply.model_dump_json().encode())

    subscription = await nats.subscribe(evidence_app.runtime.names.subject(GET_RELEASE), cb=answer)
    await nats.flush()
    yield known
    await subscription.unsubscribe()


def task(target: str, kind: str, status: str, *, deployed: str, previous: str | None) -> d.TaskOutcome:
    return d.TaskOutcome(
        task_id=uuid.uuid4(),
        target_id=uuid.uuid5(uuid.NAMESPACE_DNS, target),
        target_name=target,
        type=kind,
        status=status,
        components=[
            {
                "name": name,
                "digest": digest(f"{deployed}-{name}"),
                "previous_digest": previous and digest(f"{previous}-{name}"),
            }
            for name in COMPONENTS
        ],
        error_code="AGT_HEALTH_CHECK_FAILED" if status == "failed" else None,
        lock_file_hash=digest(f"lock-{target}-{kind}"),
        logs_hash=digest(f"logs-{target}-{kind}"),
        sticker_hash=digest(f"sticker-{target}-{kind}") if status == "succeeded" else None,
    )


def job_completed(tenant: uuid.UUID, release_id: uuid.UUID, outcome: str, tasks: list[d.TaskOutcome], **fields: Any):
    return d.JobCompleted(
        tenant_id=tenant,
        correlation_id=uuid.uuid4(),
        job_id=fields.pop("job_id", uuid.uuid4()),
        promotion_id=fields.pop("promotion_id", uuid.uuid4()),
        release_id=release_id,
        environment_id=uuid.uuid5(release_id, "dev"),
        environment_name="dev",
        strategy="rolling",
        outcome=outcome,
        reason=fields.pop("reason", ""),
        tasks=tasks,
        finished_at=datetime.now(UTC),
        **fields,
    )


async def publish(caller: Caller, subject: str, event: Any, *, msg_id: str | None = None) -> None:
    await caller.client.nc.jetstream().publish(
        caller.client.names.subject(subject),
        event.model_dump_json().encode(),
        headers={"Nats-Msg-Id": msg_id or str(event.message_id)},
    )


async def created(collector: MessageCollector, count: int) -> list[dict[str, Any]]:
    return [json.loads(m.data) for m in await collector.wait(count, timeout=20)]


async def packets(caller: Caller) -> list[dict[str, Any]]:
    page = await caller.query(LIST_PACKETS, ListPackets)
    assert page.ok, page.error
    return page.data["items"]


def _edit_payload(bundle: bytes, packet_id: str, edit: Any) -> bytes:
    """Rewrite one envelope's payload the way an attacker with the file would (the signature stays)."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as source,
        tarfile.open(fileobj=out, mode="w:gz") as target,
    ):
        for member in source.getmembers():
            data = source.extractfile(member).read() if member.isfile() else None
            if data is not None and member.name.endswith(f"{packet_id}.dsse.json"):
                envelope = json.loads(data)
                statement = json.loads(base64.b64decode(envelope["payload"]))
                edit(statement["predicate"])
                envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
                data = json.dumps(envelope).encode()
                member.size = len(data)
            target.addfile(member, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


async def test_job_and_drift_events_make_signed_chained_packets_once_that_verify_offline(
    caller: Caller, evidence_app: EvidenceApp, releases: dict, nats: Client, tmp_path: Path
) -> None:
    release_id = uuid.uuid4()
    releases[release_id] = release_view(release_id)
    tenant = caller.tenant_id
    deployed = job_completed(
        tenant,
        release_id,
        "succeeded",
        [task(t, "deploy", "succeeded", deployed="new", previous="old") for t in ("host-a", "host-b")],
        reason="",
        artifacts=[{"type": "compose_lock", "name": "compose.stella.lock.yml", "content_hash": digest("lock")}],
    )
    rolled_back = job_completed(
        tenant,
        release_id,
        "rolled_back",
        [
            task("host-a", "deploy", "succeeded", deployed="new", previous="old"),
            task("host-b", "deploy", "failed", deployed="new", previous="old"),
            task("host-a", "rollback", "succeeded", deployed="old", previous="new"),
            task("host-b", "rollback", "succeeded", deployed="old", previous="new"),
        ],
        reason="batch 2 failed its health check",
    )
    drift = d.DriftDetected(
        tenant_id=tenant,
        correlation_id=uuid.uuid4(),
        target_id=uuid.uuid5(uuid.NAMESPACE_DNS, "host-a"),
        target_name="host-a",
        environment_id=uuid.uuid5(release_id, "dev"),
        release_id=release_id,
        differences=[
            {"kind": "digest", "component": "api", "expected": digest("new-api"), "actual": digest("by-hand-api")}
        ],
        detected_at=datetime.now(UTC),
    )

    async with collect_messages(nats.jetstream(), caller.client.names.subject(PACKET_CREATED)) as seen:
        await publish(caller, d.JOB_COMPLETED, deployed)
        await publish(caller, d.JOB_COMPLETED, rolled_back)
        await publish(caller, d.DRIFT_DETECTED, drift)
        made = await created(seen, 4)
        # The same facts again (redelivered past the duplicate window, or sent twice): no new packet.
        await publish(caller, d.JOB_COMPLETED, deployed, msg_id=f"again-{uuid.uuid4()}")
        await publish(caller, d.JOB_COMPLETED, rolled_back.model_copy(update={"message_id": uuid.uuid4()}))
        await publish(caller, d.DRIFT_DETECTED, drift.model_copy(update={"message_id": uuid.uuid4()}))
        marker = job_completed(
            tenant, release_id, "failed", [task("host-c", "deploy", "failed", deployed="new", previous=None)]
        )
        await publish(caller, d.JOB_COMPLETED, marker)
        made += (await created(seen, 5))[4:]

    assert sorted(p["packet_type"] for p in made) == ["deployment", "deployment", "deployment", "drift", "rollback"]
    stored = await packets(caller)
    assert [p["sequence"] for p in stored] == [1, 2, 3, 4, 5]
    by_key = {(p["packet_type"], p["content"]["execution"].get("deployment_job_id")): p for p in stored}

    first = by_key[("deployment", str(deployed.job_id))]["content"]
    assert first["execution"]["strategy"] == "rolling" and first["execution"]["outcome"] == "succeeded"
    assert [t["target_name"] for t in first["execution"]["tasks"]] == ["host-a", "host-b"]
    assert first["execution"]["tasks"][0]["lock_file_hash"] == digest("lock-host-a-deploy")
    assert first["execution"]["tasks"][0]["logs_hash"] == digest("logs-host-a-deploy")
    assert first["execution"]["logs_hash"].startswith("sha256:")
    assert first["execution"]["artifacts"][0]["name"] == "compose.stella.lock.yml"
    assert {(c["image_repository"], c["digest"]) for c in first["release"]["components"]} == {
        (f"registry.example.com/shop/{n}", digest(f"new-{n}")) for n in COMPONENTS
    }
    assert [t["name"] for t in first["environment"]["targets"]] == ["host-a", "host-b"]

    rollback = by_key[("rollback", str(rolled_back.job_id))]
    assert rollback["promotion_id"] == str(rolled_back.promotion_id)
    assert {t["type"] for t in rollback["content"]["execution"]["tasks"]} == {"rollback"}
    assert rollback["content"]["previous"] == {"rollback_of": str(rolled_back.job_id), "automatic": True}
    restored = {c["digest"] for c in rollback["content"]["release"]["components"] if c["role"] == "restored"}
    assert restored == {digest(f"old-{n}") for n in COMPONENTS}
    assert by_key[("deployment", str(rolled_back.job_id))]["content"]["execution"]["outcome"] == "rolled_back"

    drifted = next(p for p in stored if p["packet_type"] == "drift")["content"]
    assert drifted["execution"]["differences"] == [
        {"kind": "digest", "component": "api", "expected": digest("new-api"), "actual": digest("by-hand-api")}
    ]
    assert ("api", digest("by-hand-api"), "actual") in {
        (c["name"], c["digest"], c["role"]) for c in drifted["release"]["components"]
    }

    export = await caller.query(EXPORT_BUNDLE, ExportBundle)
    assert export.ok, export.error
    store = await nats.jetstream().object_store(export.data["bucket"])
    bundle = (await store.get(export.data["object"])).data or b""
    path = tmp_path / "evidence.tar.gz"
    path.write_bytes(bundle)
    keys = await published_keys(caller, tmp_path / "published-keys")
    code, out = await verify_offline(path, keys)
    assert code == 0, out
    assert "OK: 5 packets, sequences 1..5" in out

    def retarget(predicate: dict[str, Any]) -> None:
        predicate["content"]["execution"]["differences"][0]["actual"] = digest("new-api")

    drift_id = next(p["id"] for p in stored if p["packet_type"] == "drift")
    tampered = tmp_path / "tampered.tar.gz"
    tampered.write_bytes(_edit_payload(bundle, drift_id, retarget))
    code, out = await verify_offline(tampered, keys)
    assert code == 1, out


async def test_a_manual_rollback_job_makes_one_rollback_packet(
    caller: Caller, evidence_app: EvidenceApp, releases: dict, nats: Client
) -> None:
    release_id = uuid.uuid4()
    releases[release_id] = release_view(release_id)
    original = uuid.uuid4()
    rollback = job_completed(
        caller.tenant_id,
        release_id,
        "succeeded",
        [task("host-a", "rollback", "succeeded", deployed="old", previous="new")],
        rollback_of=original,
        promotion_id=None,
    )
    async with collect_messages(nats.jetstream(), caller.client.names.subject(PACKET_CREATED)) as seen:
        await publish(caller, d.JOB_COMPLETED, rollback)
        (made,) = await created(seen, 1)
    assert made["packet_type"] == "rollback"
    (stored,) = await packets(caller)
    assert stored["content"]["previous"] == {"rollback_of": str(original), "automatic": False}
    assert stored["promotion_id"] is None
    assert {c["digest"] for c in stored["content"]["release"]["components"] if c["role"] == "restored"} == {
        digest(f"old-{n}") for n in COMPONENTS
    }


async def test_drift_with_no_known_release_makes_no_packet(
    caller: Caller, evidence_app: EvidenceApp, releases: dict
) -> None:
    drift = d.DriftDetected(
        tenant_id=caller.tenant_id,
        correlation_id=uuid.uuid4(),
        target_id=uuid.uuid4(),
        target_name="host-z",
        environment_id=uuid.uuid4(),
        release_id=None,
        differences=[{"kind": "missing_sticker", "component": None, "expected": None, "actual": None}],
        detected_at=datetime.now(UTC),
        sticker_found=False,
    )
    await publish(caller, d.DRIFT_DETECTED, drift)

    async def handled() -> bool:
        async with evidence_app.runtime.pool.acquire() as conn:
            return bool(await conn.fetchval("SELECT count(*) FROM inbox WHERE message_id = $1", drift.message_id))

    await eventually(handled)
    assert await packets(caller) == []
