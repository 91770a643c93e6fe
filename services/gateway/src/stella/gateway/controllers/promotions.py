"""``/api/v1/promotions``: promotions, their decision records, approvals and evidence.

Promotions are served by the promotion service, votes and approval requests by the approval service,
evidence by the evidence service. Permissions:

* reading a promotion, its decision and its approvals: ``promotion:read``; its evidence: ``evidence:read``;
* requesting a promotion: ``promotion:create``;
* approving or rejecting: ``promotion:approve``. Whether the voter is eligible for this promotion (the
  permission, the policy's approver groups, separation of duties) is the approval service's decision: the
  vote carries the caller's permissions and groups;
* cancelling: ``promotion:update``;
* overriding a freeze: ``promotion:read`` at the gateway, because a window's exceptions may name any
  principal (a developer, say), and only the promotion service knows the windows. It lets the override
  through when the caller is one of the closing windows' exceptions or holds ``freeze:override``, told by
  the command's ``may_override`` whether the caller holds it.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from litestar import Controller, Response, get, post
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter, QueryParameter

from stella.contracts import approval as approvals
from stella.contracts import events, evidence
from stella.contracts import promotion as contract
from stella.contracts.promotion import PromotionStatus, PromotionView
from stella.gateway.auth import Identity, require
from stella.gateway.dependencies import ID_SCHEMA, location, parse_id, problems
from stella.gateway.pagination import PageParams
from stella.gateway.permissions import Action, Resource, permission
from stella.gateway.relay import CallContext, Relay, parse_data
from stella.gateway.runtime import Runtime
from stella.gateway.schemas import (
    ApprovalRequestOut,
    CloudEventPage,
    DecisionOut,
    FreezeOverride,
    PacketPage,
    PacketType,
    PromotionCancel,
    PromotionCreate,
    PromotionPage,
    VoteAction,
    VoteBody,
)

BASE = "/api/v1/promotions"
_ID = Parameter(description="Promotion id", schema_extra=ID_SCHEMA)

FREEZE_OVERRIDE_PERMISSION = permission(Resource.FREEZE, Action.OVERRIDE)
"""The permission that lets a promotion through any freeze window (reference §3 and §8: freeze-override)."""


def voter_permissions(identity: Identity) -> list[str]:
    """The permissions a vote carries: all of the caller's, as ``{resource}:{action}`` strings, sorted."""
    return sorted(identity.permissions)


def voter_groups(identity: Identity) -> list[str]:
    """The groups a vote carries: the caller's, as read with its token, sorted."""
    return sorted(identity.groups)


class PromotionController(Controller):
    """Promotions of the caller's tenant."""

    path = BASE
    tags = ["promotions"]

    @post(
        "/",
        operation_id="requestPromotion",
        summary="Request a promotion",
        guards=[require(Resource.PROMOTION, Action.CREATE)],
        status_code=201,
        responses=problems(400, 403, 404, 409, 422),
        response_headers=[
            ResponseHeader(name="Location", description="URL of the new promotion", documentation_only=True)
        ],
    )
    async def request_promotion(
        self,
        data: JSONBody[PromotionCreate],
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        runtime: NamedDependency[Runtime],
    ) -> Response[PromotionView]:
        """Ask to promote a ready release into an environment; its workflow (gates, approvals, evidence) starts.

        The answer is the new promotion in ``pending_gate``; read it again to follow it. The release must be
        ready and the environment the first one or next after one the release reached (422 otherwise).
        """
        command = call.command(contract.RequestPromotion, **data.model_dump(exclude_none=True))
        promotion = parse_data(PromotionView, await relay.command(call, contract.REQUEST_PROMOTION, command))
        return Response(promotion, status_code=201, headers={"Location": location(runtime, f"{BASE}/{promotion.id}")})

    @get(
        "/",
        operation_id="listPromotions",
        summary="List promotions",
        guards=[require(Resource.PROMOTION, Action.READ)],
        responses=problems(400, 403),
    )
    async def list_promotions(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        page: NamedDependency[PageParams],
        status: Annotated[PromotionStatus | None, QueryParameter(description="Only this status.")] = None,
        release_id: Annotated[UUID | None, QueryParameter(description="Only promotions of this release.")] = None,
        environment_id: Annotated[
            UUID | None, QueryParameter(description="Only promotions into this environment.")
        ] = None,
    ) -> PromotionPage:
        """List the tenant's promotions, newest first."""
        query = call.query(
            contract.ListPromotions,
            status=status.value if status is not None else None,
            release_id=release_id,
            environment_id=environment_id,
            page=page.to_contract(),
        )
        return parse_data(PromotionPage, await relay.query(contract.LIST_PROMOTIONS, query))

    @get(
        "/{promotion_id:str}",
        operation_id="getPromotion",
        summary="Read a promotion",
        guards=[require(Resource.PROMOTION, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def get_promotion(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], promotion_id: str = _ID
    ) -> PromotionView:
        """Read one promotion with its status, why it is there, and its latest decision record."""
        query = call.query(contract.GetPromotion, promotion_id=parse_id(promotion_id, "promotion_id"))
        return parse_data(PromotionView, await relay.query(contract.GET_PROMOTION, query))

    @get(
        "/{promotion_id:str}/decision",
        operation_id="getPromotionDecision",
        summary="Read a promotion's decision record",
        guards=[require(Resource.PROMOTION, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def get_decision(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], promotion_id: str = _ID
    ) -> DecisionOut:
        """The latest decision record with every input it was computed from; 404 until the gates were evaluated."""
        query = call.query(contract.GetDecision, promotion_id=parse_id(promotion_id, "promotion_id"))
        return parse_data(DecisionOut, await relay.query(contract.GET_DECISION, query))

    @post(
        "/{promotion_id:str}/approve",
        operation_id="approvePromotion",
        summary="Approve a promotion",
        guards=[require(Resource.PROMOTION, Action.APPROVE)],
        status_code=200,
        responses=problems(400, 403, 404, 409, 422),
    )
    async def approve(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        data: JSONBody[VoteBody | None] = None,
        promotion_id: str = _ID,
    ) -> ApprovalRequestOut:
        """Approve a promotion waiting for approvals; the answer is its approval request with the vote.

        The requester may not approve when the environment requires separation of duties (422
        ``PROM_SOD_VIOLATION``); a vote cannot be cast twice or changed (409).
        """
        return await _vote(call, relay, promotion_id, VoteAction.APPROVED, data)

    @post(
        "/{promotion_id:str}/reject",
        operation_id="rejectPromotion",
        summary="Reject a promotion",
        guards=[require(Resource.PROMOTION, Action.APPROVE)],
        status_code=200,
        responses=problems(400, 403, 404, 409, 422),
    )
    async def reject(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        data: JSONBody[VoteBody | None] = None,
        promotion_id: str = _ID,
    ) -> ApprovalRequestOut:
        """Reject a promotion waiting for approvals: one eligible rejection rejects it."""
        return await _vote(call, relay, promotion_id, VoteAction.REJECTED, data)

    @get(
        "/{promotion_id:str}/approvals",
        operation_id="getPromotionApprovals",
        summary="Read a promotion's approval request",
        guards=[require(Resource.PROMOTION, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def get_approvals(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], promotion_id: str = _ID
    ) -> ApprovalRequestOut:
        """The promotion's approval request and its votes; 404 while none was opened."""
        query = call.query(approvals.GetApprovals, promotion_id=parse_id(promotion_id, "promotion_id"))
        return parse_data(ApprovalRequestOut, await relay.query(approvals.GET_APPROVALS, query))

    @post(
        "/{promotion_id:str}/cancel",
        operation_id="cancelPromotion",
        summary="Cancel a promotion",
        guards=[require(Resource.PROMOTION, Action.UPDATE)],
        status_code=200,
        responses=problems(400, 403, 404, 409, 422),
    )
    async def cancel(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        data: JSONBody[PromotionCancel | None] = None,
        promotion_id: str = _ID,
    ) -> PromotionView:
        """Cancel a promotion that has not started deploying; its run and approval request close too."""
        command = call.command(
            contract.CancelPromotion,
            promotion_id=parse_id(promotion_id, "promotion_id"),
            reason=data.reason if data is not None else None,
        )
        return parse_data(PromotionView, await relay.command(call, contract.CANCEL_PROMOTION, command))

    @post(
        "/{promotion_id:str}/override-freeze",
        operation_id="overridePromotionFreeze",
        summary="Let a promotion through a freeze",
        guards=[require(Resource.PROMOTION, Action.READ)],
        status_code=200,
        responses=problems(400, 403, 404, 409, 422),
    )
    async def override_freeze(
        self,
        data: JSONBody[FreezeOverride],
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        identity: NamedDependency[Identity],
        promotion_id: str = _ID,
    ) -> PromotionView:
        """Let a promotion waiting on its gates through the windows that close its environment now.

        Only a principal named in those windows' exceptions, or one holding ``freeze:override``, may (422
        ``GATE_FREEZE_OVERRIDE_FORBIDDEN`` otherwise): the promotion service decides, as only it knows the
        windows. The reason is mandatory; the override and its reason go into the decision record and the
        evidence.
        """
        command = call.command(
            contract.OverrideFreeze,
            promotion_id=parse_id(promotion_id, "promotion_id"),
            reason=data.reason,
            may_override=FREEZE_OVERRIDE_PERMISSION in identity.permissions,
        )
        return parse_data(PromotionView, await relay.command(call, contract.OVERRIDE_FREEZE, command))

    @get(
        "/{promotion_id:str}/evidence",
        operation_id="listPromotionEvidence",
        summary="List a promotion's evidence",
        guards=[require(Resource.EVIDENCE, Action.READ)],
        responses=problems(400, 403, 404),
        tags=["evidence"],
    )
    async def list_evidence(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        page: NamedDependency[PageParams],
        promotion_id: str = _ID,
        packet_type: Annotated[PacketType | None, QueryParameter(description="Only this kind of packet.")] = None,
    ) -> PacketPage:
        """The signed evidence packets of a promotion (its release decision, later its deployment), in chain order.

        404 when the tenant has no such promotion, like every route under ``/promotions/{id}``.
        """
        pid = parse_id(promotion_id, "promotion_id")
        # The promotion must be the caller's: an empty list would not tell another tenant's id from a new one.
        await relay.query(contract.GET_PROMOTION, call.query(contract.GetPromotion, promotion_id=pid))
        query = call.query(
            evidence.ListPackets,
            promotion_id=pid,
            packet_type=packet_type.value if packet_type is not None else None,
            page=page.to_contract(),
        )
        return parse_data(PacketPage, await relay.query(evidence.LIST_PACKETS, query))

    @get(
        "/{promotion_id:str}/events",
        operation_id="listPromotionEvents",
        summary="A promotion's timeline of public events",
        guards=[require(Resource.PROMOTION, Action.READ)],
        responses=problems(400, 403, 404),
        tags=["promotions", "events"],
    )
    async def list_events(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        page: NamedDependency[PageParams],
        promotion_id: str = _ID,
    ) -> CloudEventPage:
        """Every public event about the promotion, oldest first: its state changes, its approval request and
        votes, its evidence (CloudEvents, as webhooks and the live stream carry them). 404 for a promotion
        that does not exist in the caller's tenant."""
        pid = parse_id(promotion_id, "promotion_id")
        await relay.query(contract.GET_PROMOTION, call.query(contract.GetPromotion, promotion_id=pid))
        query = call.query(events.ListEvents, resource=f"promotions/{pid}", page=page.to_contract())
        return parse_data(CloudEventPage, await relay.query(events.LIST_EVENTS, query))


async def _vote(
    call: CallContext, relay: Relay, promotion_id: str, action: VoteAction, body: VoteBody | None
) -> ApprovalRequestOut:
    return await cast_vote(call, relay, promotion_id, action, body.comment if body is not None else "")


async def cast_vote(
    call: CallContext, relay: Relay, promotion_id: str, action: VoteAction, comment: str
) -> ApprovalRequestOut:
    """Cast the caller's vote on a promotion (the API's approve/reject routes and the dashboard's forms).

    Raises:
        ProblemError: 422 ``PROM_SOD_VIOLATION`` for the requester under separation of duties, 409 for a
            second vote, 404 for a promotion of another tenant.
    """
    command = call.command(
        approvals.CastVote,
        promotion_id=parse_id(promotion_id, "promotion_id"),
        action=action.value,
        comment=comment,
        permissions=voter_permissions(call.identity),
        groups=voter_groups(call.identity),
    )
    return parse_data(ApprovalRequestOut, await relay.command(call, approvals.CAST_VOTE, command))
