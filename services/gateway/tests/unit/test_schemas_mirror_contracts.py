"""The gateway's response bodies that mirror a contract view carry the same fields, and its enums the same
values, so a field added to or renamed in a contract cannot silently go missing from the HTTP API.

(Promotions and workflow runs use the contract views themselves.)
"""

from __future__ import annotations

from enum import Enum

import pytest
from pydantic import BaseModel

from stella.contracts import approval, events, evidence, integration, promotion, release, workflow
from stella.gateway import integration_schemas, schemas

MIRRORS: list[tuple[type[BaseModel], type[BaseModel]]] = [
    (schemas.ComponentOut, release.ComponentView),
    (schemas.VersionOut, release.VersionView),
    (schemas.SyncResultOut, release.SyncResult),
    (schemas.ReleaseOut, release.ReleaseView),
    (schemas.ReleaseComponentOut, release.ReleaseComponent),
    (schemas.EnvironmentOut, promotion.EnvironmentView),
    (schemas.FreezeWindowOut, promotion.FreezeWindowView),
    (schemas.EnvironmentStateOut, promotion.EnvironmentStateView),
    (schemas.PromotionCellOut, promotion.PromotionCell),
    (schemas.EnvironmentBoardEntryOut, promotion.EnvironmentBoardEntry),
    (schemas.EnvironmentBoardOut, promotion.EnvironmentBoardView),
    (schemas.ScanResultOut, promotion.ScanResultView),
    (schemas.DecisionOut, promotion.DecisionView),
    (schemas.VoteOut, approval.VoteView),
    (schemas.TemplateOut, workflow.TemplateView),
    (schemas.NodeOut, workflow.NodeSpec),
    (schemas.EdgeOut, workflow.EdgeSpec),
    (schemas.RetryOut, workflow.RetrySpec),
    (schemas.PacketOut, evidence.PacketView),
    (schemas.VerificationOut, evidence.VerificationView),
    (schemas.KeyOut, evidence.KeyView),
    (schemas.CheckpointOut, evidence.CheckpointView),
    (schemas.InclusionProofOut, evidence.InclusionProofView),
    (schemas.ConsistencyProofOut, evidence.ConsistencyProofView),
    (schemas.WebhookOut, events.WebhookView),
    (schemas.AttemptOut, events.AttemptView),
    (schemas.DeliveryOut, events.DeliveryView),
    (integration_schemas.PluginOut, integration.PluginView),
    (integration_schemas.PluginInstanceOut, integration.PluginInstanceView),
]

HIDDEN: dict[type[BaseModel], set[str]] = {
    # The workflow step that asked for the approval is the services' business, not the API's.
    schemas.ApprovalRequestOut: {"step"},
}

ENUMS: list[tuple[type[Enum], type[Enum]]] = [
    (schemas.ReleaseStatus, release.ReleaseStatus),
    (schemas.VoteAction, approval.VoteAction),
    (schemas.ApprovalStatus, approval.ApprovalStatus),
    (schemas.PacketType, evidence.PacketType),
    (schemas.DeliveryStatus, events.DeliveryStatus),
]


@pytest.mark.parametrize(("body", "view"), MIRRORS, ids=lambda m: m.__name__)
def test_a_response_body_has_the_fields_of_its_contract_view(body: type[BaseModel], view: type[BaseModel]) -> None:
    assert set(body.model_fields) == set(view.model_fields)


def test_the_approval_request_body_hides_only_the_workflow_step() -> None:
    body, view = schemas.ApprovalRequestOut, approval.ApprovalRequestView
    assert set(view.model_fields) - set(body.model_fields) == HIDDEN[body]
    assert set(body.model_fields) <= set(view.model_fields)


@pytest.mark.parametrize(("mirror", "contract"), ENUMS, ids=lambda e: e.__name__)
def test_an_enum_has_the_values_of_its_contract_enum(mirror: type[Enum], contract: type[Enum]) -> None:
    assert [m.value for m in mirror] == [c.value for c in contract]
