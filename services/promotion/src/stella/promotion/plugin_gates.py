"""Asking gate plugins for their verdicts, before a decision is taken.

Gates never perform I/O (:mod:`stella.promotion.gates`): the verdict of every ``plugin`` gate is gathered
here, each plugin called in its own isolated process (:class:`stella.plugins.PluginRunner`), and put into the
decision inputs as ``plugin_verdicts``. A plugin that crashes, hangs, answers too much, answers garbage or
is not installed gives an ``error`` verdict, which denies the promotion with the reason; the service goes on.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from stella.plugins import GATE_METHOD, Capability, PluginCatalogue, PluginError, PluginNotFound, PluginRunner
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


class PluginGates:
    """The installed gate plugins and the runner that calls them.

    Args:
        catalogue: The installed plugins.
        runner: Runs each call isolated, with the operator's limits.
    """

    def __init__(self, catalogue: PluginCatalogue, runner: PluginRunner) -> None:
        self.catalogue = catalogue
        self.runner = runner

    def checkers(self) -> dict[str, Callable[[Mapping[str, Any]], list[str]]]:
        """Each installed gate plugin's config check, by plugin id (for :class:`~stella.promotion.gates.PluginGate`)."""
        return {plugin.id: plugin.manifest.config_errors for plugin in self.catalogue.offering(Capability.GATE)}

    async def verdicts(self, gates: Sequence[Mapping[str, Any]], inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The verdict of every ``plugin`` gate in ``gates``, by gate name, asked of the plugins concurrently.

        Args:
            gates: The promotion's effective gates (validated configs).
            inputs: The decision inputs gathered so far; the plugin sees the promotion, release and environment.
        """
        wanted = [g for g in gates if g.get("type") == PLUGIN_GATE_TYPE]
        context = {key: inputs.get(key) for key in ("promotion", "release", "environment")}
        answers = await asyncio.gather(*(self._verdict(gate, context) for gate in wanted))
        return {gate["name"]: answer for gate, answer in zip(wanted, answers, strict=True)}

    async def _verdict(self, gate: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
        config = gate.get("config") or {}
        plugin_id = str(config.get("plugin"))
        try:
            plugin = self.catalogue.get(plugin_id, Capability.GATE)
            answer = await self.runner.call(plugin, GATE_METHOD, {"config": config.get("config") or {}, **context})
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
