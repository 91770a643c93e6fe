"""The public event catalogue, its CloudEvents and its AsyncAPI document."""

from __future__ import annotations

import json
import uuid
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
from stella.contracts.public.catalogue import PromotionData

ROOT = Path(__file__).resolve().parents[3]


def _validator(document: dict, schema: str) -> Draft7Validator:
    return Draft7Validator({"$ref": f"#/components/schemas/{schema}", "components": document["components"]})


def test_the_checked_in_asyncapi_document_is_the_catalogues() -> None:
    assert (ROOT / "docs" / "asyncapi.json").read_text(encoding="utf-8") == asyncapi.render(), (
        "run `make asyncapi` after changing the public event catalogue"
    )
    assert asyncapi.main(["--check", str(ROOT / "docs" / "asyncapi.json")]) == 0


def test_every_type_has_a_channel_operation_message_and_data_schema() -> None:
    document = asyncapi.document()
    assert document["asyncapi"] == "3.0.0"
    for spec in CATALOGUE:
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
        # Every $ref in the document resolves.
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


def test_deployment_agent_and_drift_events_are_public_and_match_their_schemas() -> None:
    tenant, job, promotion_id, release_id, env = (uuid.uuid4() for _ in range(5))
    now = datetime.now(UTC)
    digest = "sha256:" + "a" * 64
    started = _wire(
        deployment.JOB_STARTED,
        deployment.JobStarted(
            tenant_id=tenant,
            correlation_id=uuid.uuid4(),
            job_id=job,
            promotion_id=promotion_id,
            release_id=release_id,
            environment_id=env,
            strategy="rolling",
            target_count=3,
            started_at=now,
        ),
        tenant,
    )
    assert started["type"] == "org.stellaops.deployment.job_started"
    assert started["source"] == f"/tenants/{tenant}/deployment-jobs/{job}"
    assert started["data"]["target_count"] == 3
    assert set(related_resources(started["type"], started["data"])) == {
        f"deployment-jobs/{job}",
        f"promotions/{promotion_id}",
        f"releases/{release_id}",
        f"environments/{env}",
    }
    task = deployment.TaskOutcome(
        task_id=uuid.uuid4(),
        target_id=uuid.uuid4(),
        target_name="host-a",
        type="deploy",
        status="failed",
        components=[{"name": "api", "digest": digest, "previous_digest": None}],
        error_code="AGT_DIGEST_MISMATCH",
        logs_hash=digest,
    )
    ended = _wire(
        deployment.JOB_COMPLETED,
        deployment.JobCompleted(
            tenant_id=tenant,
            correlation_id=uuid.uuid4(),
            job_id=job,
            promotion_id=promotion_id,
            release_id=release_id,
            environment_id=env,
            strategy="rolling",
            outcome="rolled_back",
            reason="batch 2 failed",
            tasks=[task],
            finished_at=now,
        ),
        tenant,
    )
    assert ended["data"]["outcome"] == "rolled_back"
    assert ended["data"]["tasks"][0]["error_code"] == "AGT_DIGEST_MISMATCH"
    assert "logs_hash" not in ended["data"]["tasks"][0]
    agent = _wire(
        deployment.AGENT_STATUS_CHANGED,
        deployment.AgentStatusChanged(
            tenant_id=tenant,
            correlation_id=uuid.uuid4(),
            agent_id=job,
            name="edge-1",
            status="offline",
            previous_status="online",
            at=now,
        ),
        tenant,
    )
    assert (agent["type"], agent["data"]["status"], agent["subject"]) == (
        "org.stellaops.agent.status_changed",
        "offline",
        str(job),
    )
    drift = _wire(
        deployment.DRIFT_DETECTED,
        deployment.DriftDetected(
            tenant_id=tenant,
            correlation_id=uuid.uuid4(),
            target_id=job,
            target_name="host-a",
            environment_id=env,
            release_id=release_id,
            differences=[{"kind": "digest", "component": "api", "expected": digest, "actual": "sha256:" + "b" * 64}],
            detected_at=now,
        ),
        tenant,
    )
    assert drift["type"] == "org.stellaops.target.drift_detected"
    assert drift["data"]["differences"][0]["actual"] == "sha256:" + "b" * 64
    assert check_resource_filter(f"targets/{job}") == f"targets/{job}"
