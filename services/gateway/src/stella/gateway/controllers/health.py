"""``/healthz`` (the process is up) and ``/readyz`` (its database and NATS answer); no token needed."""

from __future__ import annotations

import asyncio
from typing import Final

from litestar import Controller, get
from litestar.di import NamedDependency

from stella.gateway.dependencies import problems
from stella.gateway.problems import ProblemError
from stella.gateway.runtime import Runtime
from stella.gateway.schemas import Health

CHECK_TIMEOUT_S: Final[int] = 2
"""Seconds each readiness check may take."""


async def _check_database(runtime: Runtime) -> str:
    if runtime.pool is None:
        return "not started"
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            async with runtime.pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
    except Exception as exc:  # every failure means "not ready"; the reason is reported, not raised
        return f"unavailable ({type(exc).__name__})"
    return "ok"


async def _check_nats(runtime: Runtime) -> str:
    nc = runtime.nats
    if nc is None:
        return "not started"
    if not nc.is_connected:
        return "disconnected"
    try:
        await nc.flush(timeout=CHECK_TIMEOUT_S)
    except Exception as exc:  # as above
        return f"unavailable ({type(exc).__name__})"
    return "ok"


class HealthController(Controller):
    """Liveness and readiness probes."""

    tags = ["health"]
    opt = {"exclude_from_auth": True}
    security = [{}]

    @get("/healthz", operation_id="healthz", summary="Liveness", include_in_schema=True)
    async def healthz(self) -> Health:
        """Answers 200 while the process serves requests."""
        return Health(status="ok")

    @get("/readyz", operation_id="readyz", summary="Readiness", responses=problems(503, authenticated=False))
    async def readyz(self, runtime: NamedDependency[Runtime]) -> Health:
        """Answers 200 when the database and NATS answer, else 503 ``SYS_NOT_READY`` naming what failed."""
        database, nats = await asyncio.gather(_check_database(runtime), _check_nats(runtime))
        checks = {"database": database, "nats": nats}
        if database != "ok" or nats != "ok":
            failing = ", ".join(f"{name}: {state}" for name, state in checks.items() if state != "ok")
            raise ProblemError(503, "SYS_NOT_READY", f"Not ready: {failing}.", extensions={"checks": checks})
        return Health(status="ready", checks=checks)
