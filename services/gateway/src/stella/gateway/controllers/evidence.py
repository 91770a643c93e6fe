"""``/api/v1/evidence``: signed, chained evidence packets, their verification, public keys and export bundles.

Served by the evidence service; every route needs ``evidence:read`` (verifying and exporting change nothing).
A promotion's packets are also at ``/api/v1/promotions/{id}/evidence``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from litestar import Controller, get, post
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter, QueryParameter
from litestar.response import Stream

from stella.contracts import evidence as contract
from stella.gateway.auth import require
from stella.gateway.dependencies import ID_SCHEMA, parse_id, problems
from stella.gateway.exports import MEDIA_TYPE, digest_headers
from stella.gateway.pagination import PageParams
from stella.gateway.permissions import Action, Resource
from stella.gateway.problems import ProblemError
from stella.gateway.relay import CallContext, Relay, parse_data
from stella.gateway.runtime import Runtime
from stella.gateway.schemas import (
    CheckpointOut,
    ConsistencyProofOut,
    InclusionProofOut,
    KeyList,
    PacketOut,
    PacketPage,
    PacketType,
    VerificationOut,
)

BASE = "/api/v1/evidence"
_ID = Parameter(description="Evidence packet id", schema_extra=ID_SCHEMA)
_TREE_SIZE_MAX = 2**62

PACKETS_HEADER = "X-Evidence-Packets"
"""Response header of an export: how many packets the bundle holds."""


def _instant(value: str | None, name: str) -> datetime | None:
    """Parse a time of a query parameter; it must carry its UTC offset.

    Parsed here rather than by the framework so a field error names the parameter as the client wrote it.
    """
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ProblemError(
            400,
            "VAL_INVALID_REQUEST",
            f"{name} must be an ISO 8601 time with a UTC offset, e.g. 2026-01-31T00:00:00Z.",
            errors=[{"loc": ["query", name], "msg": "an ISO 8601 time with a UTC offset"}],
        )
    return parsed


async def export_stream(
    call: CallContext,
    relay: Relay,
    runtime: Runtime,
    created_from: datetime | None,
    created_to: datetime | None,
    headers: dict[str, str] | None = None,
) -> Stream:
    """The bundle of the packets created in ``[created_from, created_to)``, streamed from the object store
    (the API's export route and the dashboard's export link)."""
    query = call.query(contract.ExportBundle, created_from=created_from, created_to=created_to)
    data = await relay.query(contract.EXPORT_BUNDLE, query, timeout_s=runtime.settings.export_timeout_s)
    bundle = parse_data(contract.ExportBundleView, data)
    chunks = await runtime.get_exports().open(bundle)
    answer = {
        **(headers or {}),
        "Content-Disposition": f'attachment; filename="{bundle.filename}"',
        "Content-Length": str(bundle.size),
        PACKETS_HEADER: str(bundle.packets),
        **digest_headers(bundle),
    }
    return Stream(chunks, media_type=MEDIA_TYPE, headers=answer)


class EvidenceController(Controller):
    """Evidence packets of the caller's tenant."""

    path = BASE
    tags = ["evidence"]

    @get(
        "/",
        operation_id="listEvidence",
        summary="List evidence packets",
        guards=[require(Resource.EVIDENCE, Action.READ)],
        responses=problems(400, 403),
    )
    async def list_packets(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        page: NamedDependency[PageParams],
        packet_type: Annotated[PacketType | None, QueryParameter(description="Only this kind of packet.")] = None,
        promotion_id: Annotated[UUID | None, QueryParameter(description="Only this promotion's packets.")] = None,
    ) -> PacketPage:
        """List the tenant's packets in chain order, oldest first."""
        query = call.query(
            contract.ListPackets,
            packet_type=packet_type.value if packet_type is not None else None,
            promotion_id=promotion_id,
            page=page.to_contract(),
        )
        return parse_data(PacketPage, await relay.query(contract.LIST_PACKETS, query))

    @get(
        "/keys",
        operation_id="listEvidenceKeys",
        summary="List the public keys of evidence signatures",
        guards=[require(Resource.EVIDENCE, Action.READ)],
        responses=problems(403),
    )
    async def list_keys(self, call: NamedDependency[CallContext], relay: NamedDependency[Relay]) -> KeyList:
        """Every public key that signs or signed evidence (PEM): a retired key still verifies what it signed."""
        return parse_data(KeyList, await relay.query(contract.LIST_KEYS, call.query(contract.ListKeys)))

    @get(
        "/checkpoint",
        operation_id="getEvidenceCheckpoint",
        summary="Read the signed checkpoint of the tenant's evidence tree",
        guards=[require(Resource.EVIDENCE, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def get_checkpoint(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        tree_size: Annotated[
            int | None, QueryParameter(description="A stored checkpoint of this size.", ge=1, le=_TREE_SIZE_MAX)
        ] = None,
    ) -> CheckpointOut:
        """The newest checkpoint (C2SP signed note of the RFC 6962 root over every packet), or the one of
        ``tree_size``. Keep the notes you read: a later consistency proof shows the history was not rewritten."""
        query = call.query(contract.GetCheckpoint, tree_size=tree_size)
        return parse_data(CheckpointOut, await relay.query(contract.GET_CHECKPOINT, query))

    @get(
        "/consistency",
        operation_id="getEvidenceConsistencyProof",
        summary="Prove an older checkpoint's tree is a prefix of a newer one's",
        guards=[require(Resource.EVIDENCE, Action.READ)],
        responses=problems(400, 403, 404, 422),
    )
    async def get_consistency_proof(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        old_size: Annotated[int, QueryParameter(description="The older tree size.", ge=1, le=_TREE_SIZE_MAX)],
        new_size: Annotated[
            int | None,
            QueryParameter(description="The newer tree size (newest when omitted).", ge=1, le=_TREE_SIZE_MAX),
        ] = None,
    ) -> ConsistencyProofOut:
        """The RFC 6962 consistency proof between the trees of ``old_size`` and ``new_size`` packets."""
        query = call.query(contract.GetConsistencyProof, old_size=old_size, new_size=new_size)
        return parse_data(ConsistencyProofOut, await relay.query(contract.GET_CONSISTENCY_PROOF, query))

    @get(
        "/export",
        operation_id="exportEvidence",
        summary="Export evidence as a verifiable bundle",
        guards=[require(Resource.EVIDENCE, Action.READ)],
        media_type=MEDIA_TYPE,
        responses={
            200: ResponseSpec(
                data_container=bytes,
                generate_examples=False,
                media_type=MEDIA_TYPE,
                description="The bundle: a tar.gz of envelopes, public keys, a SHA-256 manifest and VERIFY.md",
            ),
            **problems(400, 403, 422, 502),
        },
        response_headers=[
            ResponseHeader(name="Content-Disposition", description="attachment; filename=...", documentation_only=True),
            ResponseHeader(name="ETag", description='"sha256:<hex>" of the bundle', documentation_only=True),
            ResponseHeader(name="Digest", description="sha-256=<base64> of the bundle", documentation_only=True),
            ResponseHeader(name=PACKETS_HEADER, description="Packets in the bundle", documentation_only=True),
        ],
    )
    async def export_bundle(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        runtime: NamedDependency[Runtime],
        created_from: Annotated[
            str | None,
            QueryParameter(
                name="from",
                description="Packets created at or after this time (ISO 8601 with offset).",
                schema_extra={"format": "date-time"},
            ),
        ] = None,
        created_to: Annotated[
            str | None,
            QueryParameter(
                name="to",
                description="Packets created before this time (ISO 8601 with offset).",
                schema_extra={"format": "date-time"},
            ),
        ] = None,
    ) -> Stream:
        """Export the packets created in ``[from, to)`` as a bundle that verifies offline.

        The evidence service builds the bundle and stores it; it is streamed from there. ``ETag`` and
        ``Digest`` carry its SHA-256, so a client can check the download.
        """
        return await export_stream(call, relay, runtime, _instant(created_from, "from"), _instant(created_to, "to"))

    @get(
        "/{packet_id:str}",
        operation_id="getEvidence",
        summary="Read an evidence packet",
        guards=[require(Resource.EVIDENCE, Action.READ)],
        responses=problems(400, 403, 404),
    )
    async def get_packet(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], packet_id: str = _ID
    ) -> PacketOut:
        """Read a packet: its DSSE envelope, decoded content, hash and place in the chain."""
        query = call.query(contract.GetPacket, packet_id=parse_id(packet_id, "packet_id"))
        return parse_data(PacketOut, await relay.query(contract.GET_PACKET, query))

    @get(
        "/{packet_id:str}/proof",
        operation_id="getEvidenceInclusionProof",
        summary="Prove a packet is in the signed tree",
        guards=[require(Resource.EVIDENCE, Action.READ)],
        responses=problems(400, 403, 404, 422),
    )
    async def get_inclusion_proof(
        self,
        call: NamedDependency[CallContext],
        relay: NamedDependency[Relay],
        packet_id: str = _ID,
        tree_size: Annotated[
            int | None, QueryParameter(description="A stored checkpoint's size.", ge=1, le=_TREE_SIZE_MAX)
        ] = None,
    ) -> InclusionProofOut:
        """The RFC 6962 inclusion proof of a packet in the newest checkpoint's tree (or the one of ``tree_size``)."""
        query = call.query(contract.GetInclusionProof, packet_id=parse_id(packet_id, "packet_id"), tree_size=tree_size)
        return parse_data(InclusionProofOut, await relay.query(contract.GET_INCLUSION_PROOF, query))

    @post(
        "/{packet_id:str}/verify",
        operation_id="verifyEvidence",
        summary="Verify an evidence packet",
        guards=[require(Resource.EVIDENCE, Action.READ)],
        status_code=200,
        responses=problems(400, 403, 404),
    )
    async def verify_packet(
        self, call: NamedDependency[CallContext], relay: NamedDependency[Relay], packet_id: str = _ID
    ) -> VerificationOut:
        """Check a packet's signature, content hash and link to the packet before it; ``valid`` when all hold."""
        query = call.query(contract.VerifyPacket, packet_id=parse_id(packet_id, "packet_id"))
        return parse_data(VerificationOut, await relay.query(contract.VERIFY_PACKET, query))
