"""Asking gate plugins for their verdicts, before a decision is taken.

Gates never perform I/O (:mod:`stella.promotion.gates`): the verdict of every ``plugin`` gate is gathered
here, each plugin called in its own isolated process (:class:`stella.plugins.PluginRunner`), and put into the
decision inputs as ``plugin_verdicts``. A plugin that crashes, hangs, answers too much, answers garbage or
is not installed gives an ``error`` verdict, which denies the promotion with the reason; the service goes on.

A tenant uses a gate plugin only through an enabled plugin instance, owned by the integration service: the
instances are asked for (``resolve_plugins``) when an environment is saved and before each evaluation, so a
plugin not enabled, disabled since, or an integration service that does not answer gives an ``error``
verdict too (fail closed). The plugin receives its instance's config with the gate's own merged over it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from uuid import UUID, uuid4

from stella.contracts import integration as i
from stella.kit.broker import ServiceClient
from stella.kit.errors import Unavailable
from stella.plugins import GATE_METHOD, Capability, PluginError, PluginNotFound, PluginRunner, TenantPlugins
from stella.promotion.gates import (
    PLUGIN_GATE_TYPE,
    REASON_INVALID_RESULT,
    REASON_PLUGIN_DENIED,
    REASON_PLUGIN_FAILED,
    GateStatus,
)

log = logging.getLogger(__name__)

_REASON_CODE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
_MAX_MESSAGE: Final = 1000


class PluginsUnavailable(Unavailable):
    """The integration service did not say which plugins the tenant has enabled; nothing was stored."""

    code = "PROM_PLUGINS_UNAVAILABLE"
    title = "Plugin instances unavailable"


class PluginGates:
    """The gate plugins the tenants enabled, and the runner that calls them.

    Args:
        roots: The service's plugin path: the only directories plugins are run from.
        runner: Runs each call isolated, with the operator's limits.
        client: Asks the integration service for a tenant's plugin instances (once the service runs).
        timeout_s: How long that question may take.
    """

    def __init__(
        self,
        roots: Sequence[Path],
        runner: PluginRunner,
        client: Callable[[], ServiceClient] | None = None,
        *,
        timeout_s: float = 5.0,
    ) -> None:
        self.roots = list(roots)
        self.runner = runner
        self._client = client
        self.timeout_s = timeout_s

    async def for_tenant(self, tenant: UUID, plugin_ids: Sequence[str]) -> TenantPlugins:
        """The tenant's instances of ``plugin_ids`` (gate plugins).

        Raises:
            PluginsUnavailable: the integration service did not answer.
        """
        wanted = sorted({p for p in plugin_ids if p})
        if not wanted:
            return TenantPlugins({}, self.roots, Capability.GATE)
        if self._client is None:
            raise PluginsUnavailable("plugin gates need the integration service, which this service cannot reach")
        query = i.ResolvePlugins(
            tenant_id=tenant, correlation_id=uuid4(), plugin_ids=wanted, capability=Capability.GATE.value
        )
        reply = await self._client().query(i.RESOLVE_PLUGINS, query, timeout=self.timeout_s)
        if not reply.ok or not isinstance(reply.data, list):
            detail = reply.error.detail if reply.error is not None else "no answer"
            raise PluginsUnavailable(f"the integration service could not say which plugins are enabled: {detail}")
        return TenantPlugins({r["plugin_id"]: r for r in reply.data}, self.roots, Capability.GATE)

    async def verdicts(
        self, tenant: UUID, gates: Sequence[Mapping[str, Any]], inputs: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The verdict of every ``plugin`` gate in ``gates``, by gate name, asked of the plugins concurrently.

        Args:
            tenant: The promotion's tenant, whose plugin instances decide which plugins may run.
            gates: The promotion's effective gates (validated configs).
            inputs: The decision inputs gathered so far; the plugin sees the promotion, release and environment.
        """
        wanted = [g for g in gates if g.get("type") == PLUGIN_GATE_TYPE]
        if not wanted:
            return {}
        try:
            enabled = await self.for_tenant(tenant, [str((g.get("config") or {}).get("plugin")) for g in wanted])
        except PluginsUnavailable as exc:
            log.warning("plugin instances unavailable; plugin gates deny", extra={"detail": exc.detail})
            failed = _verdict(GateStatus.ERROR, exc.detail, [REASON_PLUGIN_FAILED, exc.code])
            return {gate["name"]: failed for gate in wanted}
        context = {key: inputs.get(key) for key in ("promotion", "release", "environment")}
        answers = await asyncio.gather(*(self._verdict(enabled, gate, context) for gate in wanted))
        return {gate["name"]: answer for gate, answer in zip(wanted, answers, strict=True)}

    async def _verdict(
        self, enabled: TenantPlugins, gate: Mapping[str, Any], context: Mapping[str, Any]
    ) -> dict[str, Any]:
        config = gate.get("config") or {}
        plugin_id = str(config.get("plugin"))
        try:
            found = enabled.get(plugin_id)
            params = {"config": found.params_config(config.get("config")), **context}
            answer = await self.runner.call(found.plugin, GATE_METHOD, params)
        except PluginNotFound as exc:
            return _verdict(GateStatus.ERROR, str(exc), [REASON_PLUGIN_FAILED, exc.code])
        except PluginError as exc:
            log.warning(
                "a gate plugin failed; its gate denies",
                extra={"plugin": plugin_id, "gate": gate.get("name"), "error": exc.code, "detail": exc.detail},
            )
            return _verdict(GateStatus.ERROR, str(exc), [REASON_PLUGIN_FAILED, exc.code], {"error": exc.code})
        if not isinstance(answer, dict) or not isinstance(answer.get("allow"), bool):
            return _verdict(
                GateStatus.ERROR,
                f"plugin {plugin_id!r} answered without a boolean 'allow'",
                [REASON_INVALID_RESULT],
            )
        message = answer.get("message")
        message = message if isinstance(message, str) else ""
        details = answer.get("details")
        details = details if isinstance(details, dict) else {}
        codes = [c for c in answer.get("reason_codes") or [] if isinstance(c, str) and _REASON_CODE.match(c)]
        if answer["allow"]:
            return _verdict(GateStatus.PASS, message or f"plugin {plugin_id} allows", codes, details)
        return _verdict(
            GateStatus.FAIL, message or f"plugin {plugin_id} denies", [REASON_PLUGIN_DENIED, *codes], details
        )


def _verdict(
    status: GateStatus, message: str, codes: list[str], details: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "status": status.value,
        "message": message[:_MAX_MESSAGE],
        "details": dict(details or {}),
        "reason_codes": sorted(set(codes)),
    }
