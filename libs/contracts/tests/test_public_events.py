"""The public event catalogue, its CloudEvents and its AsyncAPI document."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cloudevents.core.formats.json import JSONFormat
from jsonschema import Draft7Validator, ValidationError

from stella.contracts import deployment, evidence, promotion, release
from stella.contracts.public import (
    BY_INTERNAL,
    BY_TYPE,
    CATALOGUE,
    asyncapi,
    check_resource_filter,
    check_type_filter,
    public_subject,
    related_resources,
    to_cloudevent,
    type_filter_matches,
)
from stella.contracts.public.catalogue import PromotionData, PublicEventSpec

ROOT = Path(__file__).resolve().parents[3]


def _validator(document: dict, schema: str) -> Draft7Validator:
    return Draft7Validator({"$ref": f"#/components/schemas/{schema}", "components": document["components"]})


def test_the_checked_in_asyncapi_document_is_the_catalogues() -> None:
    assert (ROOT / "docs" / "asyncapi.json").read_text(encoding="utf-8") == asyncapi.render(), (
        "run `make asyncapi` after changing the public event catalogue"
    )
    assert asyncapi.main(["--check", str(ROOT / "docs" / "asyncapi.json")]) == 0


@pytest.mark.parametrize("spec", CATALOGUE, ids=lambda spec: spec.type)
def test_every_type_has_a_channel_operation_message_and_data_schema(spec: PublicEventSpec) -> None:
    document = asyncapi.document()
    assert document["asyncapi"] == "3.0.0"
    channels = [c for c in document["channels"].values() if c["title"] == spec.type]
    assert len(channels) == 1, spec.type
    assert channels[0]["address"] == f"stella.public.{{tenantId}}.{spec.context}.{spec.event}"
    [message_ref] = channels[0]["messages"].values()
    name = message_ref["$ref"].rsplit("/", 1)[-1]
    message = document["components"]["messages"][name]
    assert message["contentType"] == "application/cloudevents+json"
    assert message["x-dataschema"] == spec.dataschema
    assert spec.data.__name__ in document["components"]["schemas"]
    operations = [
        o
        for o in document["operations"].values()
        if o["channel"]["$ref"].endswith(channels[0]["title"]) or o["title"].endswith(spec.type)
    ]
    assert operations and operations[0]["action"] == "send"


def test_every_ref_in_the_asyncapi_document_resolves() -> None:
    document = asyncapi.document()
    text = json.dumps(document)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        node: object = document
        for key in ref.removeprefix("#/").split("/"):
            assert isinstance(node, dict) and key in node, ref
            node = node[key]


def _promotion_event(tenant: uuid.UUID) -> promotion.PromotionChanged:
    now = datetime.now(UTC)
    view = promotion.PromotionView(
        id=uuid.uuid4(),
        release_id=uuid.uuid4(),
        release_name="shop",
        release_components=[{"name": "api", "digest": "sha256:" + "a" * 64, "image_repository": "r/api"}],
        source_environment_id=None,
        target_environment_id=uuid.uuid4(),
        target_environment_name="prod",
        status=promotion.PromotionStatus.REJECTED,
        reason="r",
        requested_by=None,
        requested_at=now,
        updated_at=now,
        decision_record={
            "result": "deny",
            "reasons": ["GATE_FREEZE"],
            "inputs_hash": "sha256:x",
            "gates": [{"secret": 1}],
        },
        workflow_run_id=None,
        next_evaluation_at=None,
        freeze_override=None,
    )
    return promotion.PromotionChanged(tenant_id=tenant, correlation_id=uuid.uuid4(), promotion=view)


def test_a_projected_event_is_a_valid_cloud_event_matching_its_schema() -> None:
    tenant = uuid.uuid4()
    internal = _promotion_event(tenant)
    spec = BY_INTERNAL[promotion.PROMOTION_REJECTED]
    assert spec.type == "org.stellaops.promotion.rejected"
    assert spec.project is not None
    data = spec.project(internal)
    event = to_cloudevent(
        spec,
        data,
        tenant_id=tenant,
        event_id=uuid.uuid4(),
        time=internal.occurred_at,
        traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
    )
    wire = event.to_json()
    parsed = JSONFormat().read(None, wire)  # the CloudEvents SDK reads and validates it
    assert parsed.get_specversion() == "1.0"
    assert parsed.get_type() == spec.type
    assert parsed.get_source() == f"/tenants/{tenant}/promotions/{internal.promotion.id}"
    assert parsed.get_subject() == str(internal.promotion.id)
    assert parsed.get_dataschema() == spec.dataschema
    assert parsed.get_extension("tenantid") == str(tenant)
    assert parsed.get_extension("traceparent").startswith("00-")
    document = asyncapi.document()
    _validator(document, "PromotionRejectedEvent").validate(json.loads(wire))
    assert json.loads(wire)["data"]["decision"] == {
        "result": "deny",
        "reasons": ["GATE_FREEZE"],
        "inputs_hash": "sha256:x",
        "evaluated_at": None,
    }
    # The schema bites: a wrong type or missing data is refused.
    with pytest.raises(ValidationError):
        _validator(document, "PromotionRejectedEvent").validate(
            {**json.loads(wire), "type": "org.stellaops.promotion.approved"}
        )
    broken = json.loads(wire)
    del broken["data"]["promotion_id"]
    with pytest.raises(ValidationError):
        _validator(document, "PromotionRejectedEvent").validate(broken)
    assert public_subject(tenant, spec.type) == f"stella.public.{tenant}.promotion.rejected"
    assert set(related_resources(spec.type, json.loads(wire)["data"])) == {
        f"promotions/{internal.promotion.id}",
        f"releases/{internal.promotion.release_id}",
        f"environments/{internal.promotion.target_environment_id}",
    }
    assert isinstance(data, PromotionData)


def test_no_secret_reaches_public_data() -> None:
    now = datetime.now(UTC)
    component = release.ComponentView(
        id=uuid.uuid4(),
        name="api",
        display_name="api",
        image_repository="r/api",
        versioning_strategy={},
        default_channel="stable",
        registry_credential_ref="env:SECRET",
        created_at=now,
        updated_at=now,
    )
    assert component.registry_credential_ref  # the internal view names a credential...
    for spec in CATALOGUE:
        fields = set(spec.data.model_json_schema(mode="serialization").get("properties", {}))
        assert not {f for f in fields if "secret" in f or "credential" in f or f == "url"}, spec.type


def test_every_internal_subject_maps_to_one_type_and_models_agree() -> None:
    assert BY_INTERNAL[evidence.PACKET_CREATED].type == "org.stellaops.evidence.recorded"
    assert BY_INTERNAL[release.RELEASE_READY].type == "org.stellaops.release.ready"
    assert len(BY_TYPE) == len(CATALOGUE)
    for spec in CATALOGUE:
        assert (spec.internal is None) == (spec.project is None) == (spec.internal_model is None)


def test_filters() -> None:
    assert check_type_filter("org.stellaops.approval.*") == "org.stellaops.approval.*"
    for bad in ("org.stellaops.*", "org.stellaops.approval.maybe", "x", "org.stellaops.webhooks.*"):
        with pytest.raises(ValueError, match="unknown event type"):
            check_type_filter(bad)
    assert type_filter_matches([], "org.stellaops.release.ready")
    assert type_filter_matches(["org.stellaops.release.*"], "org.stellaops.release.ready")
    assert not type_filter_matches(["org.stellaops.release.created"], "org.stellaops.release.ready")
    pid = uuid.uuid4()
    assert check_resource_filter(f"promotions/{str(pid).upper()}") == f"promotions/{pid}"
    for bad in ("promotions", "promotions/1", "tenants/" + str(pid), "/promotions/" + str(pid)):
        with pytest.raises(ValueError, match="resource filter"):
            check_resource_filter(bad)


def _wire(spec_subject: str, internal: object, tenant: uuid.UUID) -> dict:
    spec = BY_INTERNAL[spec_subject]
    assert spec.project is not None
    data = spec.project(internal)  # type: ignore[arg-type]
    event = to_cloudevent(spec, data, tenant_id=tenant, event_id=uuid.uuid4(), time=datetime.now(UTC))
    wire = event.to_json()
    JSONFormat().read(None, wire)
    body = json.loads(wire)
    name = "".join(part.capitalize() for part in f"{spec.context}_{spec.event}".split("_")) + "Event"
    _validator(asyncapi.document(), name).validate(body)
    return body


_DIGEST = "sha256:" + "a" * 64


@dataclass(frozen=True)
class _Ids:
    """The ids one internal event and its public projection share."""

    tenant: uuid.UUID = field(default_factory=uuid.uuid4)
    job: uuid.UUID = field(default_factory=uuid.uuid4)
    promotion: uuid.UUID = field(default_factory=uuid.uuid4)
    release: uuid.UUID = field(default_factory=uuid.uuid4)
    env: uuid.UUID = field(default_factory=uuid.uuid4)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


def _job_started(ids: _Ids) -> deployment.JobStarted:
    return deployment.JobStarted(
        tenant_id=ids.tenant,
        correlation_id=uuid.uuid4(),
        job_id=ids.job,
        promotion_id=ids.promotion,
        release_id=ids.release,
        environment_id=ids.env,
        strategy="rolling",
        target_count=3,
        started_at=ids.now,
    )


def _job_started_public(body: dict, ids: _Ids) -> None:
    assert body["source"] == f"/tenants/{ids.tenant}/deployment-jobs/{ids.job}"
    assert body["data"]["target_count"] == 3
    assert set(related_resources(body["type"], body["data"])) == {
        f"deployment-jobs/{ids.job}",
        f"promotions/{ids.promotion}",
        f"releases/{ids.release}",
        f"environments/{ids.env}",
    }


def _job_completed(ids: _Ids) -> deployment.JobCompleted:
    task = deployment.TaskOutcome(
        task_id=uuid.uuid4(),
        target_id=uuid.uuid4(),
        target_name="host-a",
        type="deploy",
        status="failed",
        components=[{"name": "api", "digest": _DIGEST, "previous_digest": None}],
        error_code="AGT_DIGEST_MISMATCH",
        logs_hash=_DIGEST,
    )
    return deployment.JobCompleted(
        tenant_id=ids.tenant,
        correlation_id=uuid.uuid4(),
        job_id=ids.job,
        promotion_id=ids.promotion,
        release_id=ids.release,
        environment_id=ids.env,
        strategy="rolling",
        outcome="rolled_back",
        reason="batch 2 failed",
        tasks=[task],
        finished_at=ids.now,
    )


def _job_completed_public(body: dict, ids: _Ids) -> None:
    assert body["data"]["outcome"] == "rolled_back"
    assert body["data"]["tasks"][0]["error_code"] == "AGT_DIGEST_MISMATCH"
    assert "logs_hash" not in body["data"]["tasks"][0]


def _tasks_progressed(ids: _Ids) -> deployment.TasksProgressed:
    def task(name: str, status: str, **fields: object) -> deployment.TaskProgress:
        return deployment.TaskProgress(
            task_id=uuid.uuid4(),
            target_id=uuid.uuid4(),
            target_name=name,
            type="deploy",
            batch=1,
            status=status,
            attempt=1,
            **fields,
        )

    return deployment.TasksProgressed(
        tenant_id=ids.tenant,
        correlation_id=uuid.uuid4(),
        job_id=ids.job,
        promotion_id=ids.promotion,
        release_id=ids.release,
        environment_id=ids.env,
        strategy="rolling",
        job_status="running",
        current_batch=1,
        batch_count=4,
        target_count=8,
        agent_id=uuid.uuid4(),
        tasks=[
            task("host-a", "running", log_lines=12, log_seq=3),
            task("host-b", "failed", log_lines=40, log_seq=7, error_code="AGT_HEALTH_CHECK_FAILED"),
        ],
        at=ids.now,
    )


def _tasks_progressed_public(body: dict, ids: _Ids) -> None:
    data = body["data"]
    assert (body["subject"], data["job_status"], data["current_batch"], data["batch_count"]) == (
        str(ids.job),
        "running",
        1,
        4,
    )
    assert [(t["target_name"], t["status"], t["log_lines"], t["log_seq"]) for t in data["tasks"]] == [
        ("host-a", "running", 12, 3),
        ("host-b", "failed", 40, 7),
    ]
    assert data["tasks"][1]["error_code"] == "AGT_HEALTH_CHECK_FAILED"
    assert "agent_id" not in data  # which agent ran what stays inside
    assert f"promotions/{ids.promotion}" in related_resources(body["type"], data)


def _agent_status_changed(ids: _Ids) -> deployment.AgentStatusChanged:
    return deployment.AgentStatusChanged(
        tenant_id=ids.tenant,
        correlation_id=uuid.uuid4(),
        agent_id=ids.job,
        name="edge-1",
        status="offline",
        previous_status="online",
        at=ids.now,
    )


def _agent_status_changed_public(body: dict, ids: _Ids) -> None:
    assert (body["data"]["status"], body["subject"]) == ("offline", str(ids.job))


def _drift_detected(ids: _Ids) -> deployment.DriftDetected:
    return deployment.DriftDetected(
        tenant_id=ids.tenant,
        correlation_id=uuid.uuid4(),
        target_id=ids.job,
        target_name="host-a",
        environment_id=ids.env,
        release_id=ids.release,
        differences=[{"kind": "digest", "component": "api", "expected": _DIGEST, "actual": "sha256:" + "b" * 64}],
        detected_at=ids.now,
    )


def _drift_detected_public(body: dict, ids: _Ids) -> None:
    assert body["data"]["differences"][0]["actual"] == "sha256:" + "b" * 64
    assert check_resource_filter(f"targets/{ids.job}") == f"targets/{ids.job}"


@pytest.mark.parametrize(
    ("subject", "public_type", "internal", "check"),
    [
        pytest.param(
            deployment.JOB_STARTED,
            "org.stellaops.deployment.job_started",
            _job_started,
            _job_started_public,
            id="job_started",
        ),
        pytest.param(
            deployment.JOB_COMPLETED,
            "org.stellaops.deployment.job_completed",
            _job_completed,
            _job_completed_public,
            id="job_completed",
        ),
        pytest.param(
            deployment.TASKS_PROGRESSED,
            "org.stellaops.deployment.tasks_progressed",
            _tasks_progressed,
            _tasks_progressed_public,
            id="tasks_progressed",
        ),
        pytest.param(
            deployment.AGENT_STATUS_CHANGED,
            "org.stellaops.agent.status_changed",
            _agent_status_changed,
            _agent_status_changed_public,
            id="agent_status_changed",
        ),
        pytest.param(
            deployment.DRIFT_DETECTED,
            "org.stellaops.target.drift_detected",
            _drift_detected,
            _drift_detected_public,
            id="drift_detected",
        ),
    ],
)
def test_deployment_agent_and_drift_events_are_public_and_match_their_schemas(
    subject: str,
    public_type: str,
    internal: Callable[[_Ids], object],
    check: Callable[[dict, _Ids], None],
) -> None:
    ids = _Ids()
    body = _wire(subject, internal(ids), ids.tenant)
    assert body["type"] == public_type
    check(body, ids)
