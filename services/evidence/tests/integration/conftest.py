"""An evidence service running in-process on real Postgres and NATS, with stand-ins for its upstream services.

The promotion and approval services answer ``get_promotion`` / ``get_approvals``; here an :class:`Upstream`
answers those subjects on real NATS with valid contract payloads, and can be switched silent or off to play
a service that hangs or is down.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest_asyncio
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from stella.contracts.approval import GET_APPROVALS, ApprovalRequestView, ApprovalStatus, VoteAction, VoteView
from stella.contracts.canonical import content_hash
from stella.contracts.envelope import Command, ErrorDetail, Reply
from stella.contracts.evidence import (
    COLLECT_PACKET,
    EXPORT_BUNDLE,
    LIST_KEYS,
    CollectEvidence,
    ExportBundle,
    ListKeys,
)
from stella.contracts.promotion import GET_DECISION, GET_PROMOTION, DecisionView, PromotionStatus, PromotionView
from stella.contracts.streams import HEADER_MSG_ID, HEADER_REPLY_TO
from stella.contracts.workflow import ExecuteStep
from stella.evidence.app import MIGRATIONS, EvidenceApp, create_app
from stella.evidence.settings import Settings
from stella.kit.naming import Names
from stella.testing.services import TenantCaller, service_client

T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


def digest(seed: str) -> str:
    """A well-formed sha256 digest derived from ``seed``."""
    return "sha256:" + hashlib.sha256(seed.encode()).hexdigest()


def decision_inputs(promotion_id: uuid.UUID) -> dict[str, Any]:
    """What the promotion service's gates saw for the decision of ``promotion_view(promotion_id)``."""
    return {
        "gates": [{"type": "freeze-window", "name": "freeze", "config": {}}],
        "freeze_windows": [
            {"name": "year-end", "starts_at": "2026-12-20T00:00:00Z", "ends_at": "2027-01-02T00:00:00Z"}
        ],
        "release": {"id": str(uuid.uuid5(promotion_id, "release")), "digests": [digest(f"{promotion_id}-web")]},
    }


def promotion_view(
    promotion_id: uuid.UUID,
    *,
    status: PromotionStatus = PromotionStatus.APPROVED,
    approvers: list[uuid.UUID] | None = None,
    result: str = "allow",
    gate_details: dict[str, Any] | None = None,
    run_id: uuid.UUID | None = None,
) -> PromotionView:
    """A promotion as the promotion service reports it, with a release of two images and a decision record."""
    approvers = approvers or []
    decided = status not in (PromotionStatus.PENDING_GATE, PromotionStatus.PENDING_APPROVAL)
    record = {
        "result": result,
        "gates": [
            {
                "type": "freeze-window",
                "name": "freeze",
                "status": "pass" if result == "allow" else "fail",
                "message": "no freeze window is active",
                "details": gate_details or {"windows_checked": 2},
                "reason_codes": [] if result == "allow" else ["GATE_FREEZE_ACTIVE"],
            }
        ],
        "reasons": [] if result == "allow" else ["GATE_FREEZE_ACTIVE"],
        "approvals": [
            {"approver": str(a), "action": "approved", "at": "2026-03-02T10:00:00Z", "comment": f"ok from {i}"}
            for i, a in enumerate(approvers)
        ],
        "policy_digest": None,
        "inputs_hash": content_hash({"clock": "2026-03-02T10:00:01Z", "inputs": decision_inputs(promotion_id)}),
        "evaluated_at": "2026-03-02T10:00:01Z",
    }
    return PromotionView(
        id=promotion_id,
        release_id=uuid.uuid5(promotion_id, "release"),
        release_name="shop-2026.3",
        release_components=[
            {
                "component_id": str(uuid.uuid5(promotion_id, name)),
                "name": name,
                "image_repository": f"registry.example.com/shop/{name}",
                "digest": digest(f"{promotion_id}-{name}"),
                "tag": "1.4.0",
                "semver": "1.4.0",
            }
            for name in ("web", "api")
        ],
        source_environment_id=None,
        target_environment_id=uuid.uuid5(promotion_id, "prod"),
        target_environment_name="prod",
        status=status,
        reason="quarterly release",
        requested_by=uuid.uuid5(promotion_id, "requester"),
        requested_by_name="rita",
        requested_by_display_name="Rita Requester",
        requested_at=T0,
        updated_at=T0 + timedelta(hours=1),
        decision_record=record if decided else None,
        workflow_run_id=run_id,
        next_evaluation_at=None,
        freeze_override=None,
    )


def approval_view(promotion_id: uuid.UUID, approvers: list[uuid.UUID]) -> ApprovalRequestView:
    """A granted approval request with one vote per approver."""
    return ApprovalRequestView(
        promotion_id=promotion_id,
        environment_id=uuid.uuid5(promotion_id, "prod"),
        requester_id=uuid.uuid5(promotion_id, "requester"),
        required=len(approvers),
        require_sod=True,
        approver_groups=["release-managers"],
        status=ApprovalStatus.GRANTED,
        requested_at=T0 + timedelta(minutes=5),
        expires_at=T0 + timedelta(days=7),
        decided_at=T0 + timedelta(minutes=30),
        votes=[
            VoteView(
                approver_id=a,
                action=VoteAction.APPROVED,
                comment=f"reviewed the diff ({i})",
                at=T0 + timedelta(minutes=10 + i),
                approver_name=f"approver-{i}",
                approver_display_name=f"Approver {i}",
            )
            for i, a in enumerate(approvers)
        ],
    )


def execute_step(
    tenant_id: uuid.UUID,
    promotion_id: uuid.UUID,
    *,
    run_id: uuid.UUID | None = None,
    attempt: int = 1,
    required_approvals: int = 2,
    message_id: uuid.UUID | None = None,
) -> ExecuteStep:
    """The ``ExecuteStep`` the workflow sends for the evidence step of a promotion's run."""
    run_id = run_id or uuid.uuid4()
    return ExecuteStep(
        message_id=message_id or uuid.uuid5(run_id, f"evidence:{attempt}"),
        tenant_id=tenant_id,
        correlation_id=uuid.uuid4(),
        run_id=run_id,
        node_id="evidence",
        attempt=attempt,
        step_type="evidence",
        config={},
        inputs={
            "inputs": {
                "promotion_id": str(promotion_id),
                "release_id": str(uuid.uuid5(promotion_id, "release")),
                "environment_id": str(uuid.uuid5(promotion_id, "prod")),
                "requested_by": str(uuid.uuid5(promotion_id, "requester")),
                "approval_required": required_approvals > 0,
                "required_approvals": required_approvals,
                "require_sod": True,
                "approver_groups": ["release-managers"],
            },
            "steps": {"gates": {"result": "allow"}},
        },
        subject_id=promotion_id,
    )


def packet_content(index: int, *, padding: int = 0) -> dict[str, Any]:
    """Content of a ``deployment`` packet; ``padding`` adds that many hard-to-compress gate results."""
    return {
        "release": {
            "id": str(uuid.uuid5(uuid.NAMESPACE_OID, f"release-{index}")),
            "name": f"shop-{index}",
            "components": [
                {
                    "name": "api",
                    "digest": digest(f"api-{index}"),
                    "semver": "2.0.0",
                    "tag": "2.0.0",
                    "image_repository": "registry.example.com/shop/api",
                }
            ],
        },
        "environment": {"id": "prod", "name": "prod", "targets": ["host-a"]},
        "execution": {
            "deployment_job_id": f"job-{index}",
            "artifacts": [
                {"type": "log", "name": f"check-{i}", "content_hash": digest(f"{index}-{i}")} for i in range(padding)
            ],
        },
    }


@dataclass
class Upstream:
    """Stand-ins for the promotion and approval services' queries on real NATS.

    ``promotions[id]`` lists successive answers (the last one repeats); a promotion or approval request that
    is not known answers 404. A subject in ``silent`` receives requests but never answers (a hung service);
    :meth:`stop` removes the subscriptions (a service that is down).
    """

    nc: Client
    names: Names
    promotions: dict[uuid.UUID, list[PromotionView]] = field(default_factory=dict)
    approvals: dict[uuid.UUID, ApprovalRequestView] = field(default_factory=dict)
    calls: dict[str, list[uuid.UUID]] = field(
        default_factory=lambda: {GET_PROMOTION: [], GET_APPROVALS: [], GET_DECISION: []}
    )
    silent: set[str] = field(default_factory=set)
    _subs: list[Subscription] = field(default_factory=list)

    async def start(self, *subjects: str) -> None:
        """Answer ``subjects`` (both queries when none are named)."""
        for subject in subjects or (GET_PROMOTION, GET_APPROVALS, GET_DECISION):
            self._subs.append(await self.nc.subscribe(self.names.subject(subject), cb=self._answer))
        await self.nc.flush()

    async def stop(self) -> None:
        """Stop answering anything."""
        while self._subs:
            await self._subs.pop().unsubscribe()
        await self.nc.flush()

    async def _answer(self, msg: Msg) -> None:
        subject = self.names.local(msg.subject)
        promotion_id = uuid.UUID(json.loads(msg.data)["promotion_id"])
        self.calls[subject].append(promotion_id)
        if subject in self.silent:
            return
        answer: Any = None
        if subject == GET_PROMOTION and promotion_id in self.promotions:
            answers = self.promotions[promotion_id]
            answer = answers.pop(0) if len(answers) > 1 else answers[0]
        elif subject == GET_APPROVALS:
            answer = self.approvals.get(promotion_id)
        elif subject == GET_DECISION and promotion_id in self.promotions:
            latest = self.promotions[promotion_id][-1]
            if latest.decision_record is not None:
                answer = DecisionView(
                    promotion_id=promotion_id,
                    trigger="gates",
                    evaluated_at=datetime(2026, 3, 2, 10, 0, 1, tzinfo=UTC),
                    inputs=decision_inputs(promotion_id),
                    record=latest.decision_record,
                )
        if answer is None:
            reply = Reply.failure(ErrorDetail(code="RES_NOT_FOUND", status=404, title="not found", detail="no such"))
        else:
            reply = Reply.success(answer.model_dump(mode="json"))
        await msg.respond(reply.model_dump_json().encode())

    def count(self, subject: str) -> int:
        """How many requests arrived on ``subject``."""
        return len(self.calls[subject])


class Caller(TenantCaller):
    """Talks to the evidence service as one tenant, as other services and the gateway do."""

    async def redeliver(self, subject: str, command: Command, timeout: float = 15.0) -> Reply:
        """Deliver ``command`` again past the stream's duplicate window, as JetStream does after a lost ack."""
        nc = self.client.nc
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, max_msgs=1)
        try:
            await nc.jetstream().publish(
                self.client.names.subject(subject),
                command.model_dump_json().encode(),
                headers={HEADER_MSG_ID: f"redelivery-{uuid.uuid4()}", HEADER_REPLY_TO: inbox},
            )
            msg = await sub.next_msg(timeout=timeout)
        finally:
            with suppress(Exception):
                await sub.unsubscribe()
        return Reply.model_validate_json(msg.data)


@pytest_asyncio.fixture
async def evidence_settings(make_database, nats_url: str, stella_namespace: str, tmp_path: Path) -> Settings:
    dsn = await make_database([("evidence", MIGRATIONS)])
    return Settings(
        database_url=dsn,
        nats_url=nats_url,
        nats_namespace=stella_namespace,
        key_dir=tmp_path / "keys",
        max_deliver=20,
        redelivery_backoff_s=0.05,
        ack_wait_s=10,
        outbox_poll_s=0.2,
        dependency_timeout_s=0.5,
        db_pool_size=10,
    )


@pytest_asyncio.fixture
async def evidence_app(evidence_settings: Settings) -> AsyncIterator[EvidenceApp]:
    app = create_app(evidence_settings)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


@pytest_asyncio.fixture
async def upstream(evidence_app: EvidenceApp, nats: Client) -> AsyncIterator[Upstream]:
    stand_in = Upstream(nats, evidence_app.runtime.names)
    yield stand_in
    await stand_in.stop()


@pytest_asyncio.fixture
async def caller(evidence_app: EvidenceApp, nats: Client) -> AsyncIterator[Caller]:
    async with service_client(nats, evidence_app.runtime.names) as client:
        # Exports and reads over long chains take longer than the client's default wait.
        yield Caller(client, query_timeout=30)


@pytest_asyncio.fixture
async def superuser(evidence_settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A separate superuser connection to the evidence schema, for tampering the way an attacker would."""
    conn = await asyncpg.connect(evidence_settings.database_url, server_settings={"search_path": "evidence"})
    yield conn
    await conn.close()


async def eventually(predicate: Callable[[], Any], timeout: float = 15.0) -> None:
    """Wait until ``predicate()`` (plain or awaitable) holds: for effects no message announces, such as a
    retry counted in a metric or an outbox row marked published."""
    async with asyncio.timeout(timeout):
        while True:
            outcome = predicate()
            if inspect.isawaitable(outcome):
                outcome = await outcome
            if outcome:
                return
            await asyncio.sleep(0.05)


@dataclass
class Auditor:
    """What an auditor does with the service: collect packets to check, keep the published keys, verify a
    bundle offline with the verifier command (a separate process, as on the auditor's machine)."""

    caller: Caller
    directory: Path

    async def collect(self, index: int, **fields: object) -> dict[str, Any]:
        """Store a ``deployment`` packet (``packet_content(index)`` unless ``content`` is given)."""
        fields.setdefault("packet_type", "deployment")
        fields.setdefault("content", packet_content(index))
        reply = await self.caller.command(COLLECT_PACKET, CollectEvidence, **fields)
        assert reply.ok, reply.error
        return reply.data

    async def published_keys(self) -> Path:
        """Write the keys the service publishes (``list_keys``) to a directory of their own."""
        reply = await self.caller.query(LIST_KEYS, ListKeys)
        assert reply.ok, reply.error
        keys = self.directory / "published-keys"
        keys.mkdir(exist_ok=True)
        for key in reply.data["items"]:
            (keys / f"{key['key_ref'].replace(':', '_')}.pem").write_text(key["public_key_pem"])
        (keys / "key-log.json").write_text(json.dumps([key["log_entry"] for key in reply.data["items"]]))
        return keys

    async def export(self, name: str = "evidence.tar.gz", **query: Any) -> Path:
        """Export a bundle through the service and the object store, to a file."""
        reply = await self.caller.query(EXPORT_BUNDLE, ExportBundle, **query)
        assert reply.ok, reply.error
        store = await self.caller.client.nc.jetstream().object_store(reply.data["bucket"])
        path = self.directory / name
        path.write_bytes((await store.get(reply.data["object"])).data or b"")
        return path

    async def verify_offline(self, bundle: Path, *args: str) -> tuple[int, str]:
        """Run ``python -m stella.evidence.verify`` on ``bundle`` (with ``--keys`` of the published keys
        unless ``args`` say otherwise); return its exit code and output."""
        if not args:
            args = ("--keys", str(await self.published_keys()))
        return await run_verifier(bundle, *args)


async def run_verifier(bundle: Path, *args: str) -> tuple[int, str]:
    """Run ``python -m stella.evidence.verify`` on ``bundle`` with ``args``; return its exit code and output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "stella.evidence.verify",
        str(bundle),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def published_keys(caller: Caller, directory: Path) -> Path:
    """The keys the service publishes, written to a directory under ``directory`` as an auditor keeps them."""
    directory.mkdir(parents=True, exist_ok=True)
    return await Auditor(caller, directory).published_keys()


async def verify_offline(bundle: Path, keys: Path) -> tuple[int, str]:
    """Verify ``bundle`` offline trusting the published keys in ``keys``."""
    return await run_verifier(bundle, "--keys", str(keys))


@pytest_asyncio.fixture
async def auditor(caller: Caller, tmp_path: Path) -> Auditor:
    directory = tmp_path / "auditor"
    directory.mkdir()
    return Auditor(caller, directory)
