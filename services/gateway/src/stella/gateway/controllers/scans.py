"""``/api/v1/scan-results``: vulnerability scan verdicts of image digests, the security gate's input.

Posting a verdict needs ``integration:create``: a verdict is what an external scanner reports about an image,
and whoever posts it decides whether the security gate passes. Developers build the images the gate
judges, so they cannot post verdicts (their role has no ``integration:create``); scanners post them
with the token of a service principal bound to the operator role, and tenant admins may post them too.
"""

from __future__ import annotations

from litestar import Controller, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from stella.contracts import promotion as contract
from stella.gateway.auth import require
from stella.gateway.dependencies import problems
from stella.gateway.permissions import Action, Resource
from stella.gateway.relay import CallContext, Relay, parse_data
from stella.gateway.schemas import ScanResultCreate, ScanResultOut

BASE = "/api/v1/scan-results"


class ScanResultController(Controller):
    """Scan verdicts of the caller's tenant's images."""

    path = BASE
    tags = ["scan-results"]

    @post(
        "/",
        operation_id="recordScanResult",
        summary="Record a scan verdict for an image digest",
        guards=[require(Resource.INTEGRATION, Action.CREATE)],
        status_code=200,
        responses=problems(400, 403, 422),
    )
    async def record_scan_result(
        self, data: JSONBody[ScanResultCreate], call: NamedDependency[CallContext], relay: NamedDependency[Relay]
    ) -> ScanResultOut:
        """Record the latest scan verdict of a digest and answer the verdict now in force.

        A verdict older (by ``scanned_at``) than the one stored changes nothing; the answer is then the
        stored, newer one.
        """
        command = call.command(contract.RecordScanResult, **data.model_dump(exclude_none=True))
        return parse_data(ScanResultOut, await relay.command(call, contract.RECORD_SCAN_RESULT, command))
