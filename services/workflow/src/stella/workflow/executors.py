"""The step types this service executes itself, after the attempt's start is committed: ``http``, ``script``
and ``notify``.

* ``http`` sends one request: ``{url, method?, headers?, body?, expected_status?, timeout_s?}``. The URL's host
  must be on the operator's allow-list (``STELLA_WORKFLOW_HTTP_ALLOWED_HOSTS``), and the connection goes only to
  public addresses unless the operator allows a network (``STELLA_WORKFLOW_HTTP_ALLOWED_NETWORKS``), checked
  where the connection is made (:mod:`stella.kit.egress`). Redirects are not followed. Header values and the
  body are templates: ``{{ inputs.name }}`` or ``{{ steps.build.outputs.tag }}`` is replaced by that value of
  the attempt's resolved inputs. The step succeeds when the status is ``expected_status`` (default 200).
* ``script`` runs a step plugin, never a shell: ``{plugin: <id>, config: {...}}`` calls the plugin's
  ``step.execute`` in its own isolated process (:class:`stella.plugins.PluginRunner`). A plugin that crashes,
  hangs, answers too much or answers garbage fails the attempt, and the step's retry policy applies. The
  tenant must have an enabled instance of the plugin (asked of the integration service before each attempt:
  one disabled since fails the attempt); the plugin receives the instance's config with the step's merged
  over it.
* ``notify`` sends a message through a ``notification`` integration of the run's tenant:
  ``{integration: <id or name>, message, fields?}``. ``message`` and the values of ``fields`` are templates
  like an ``http`` step's; the integration service sends it (:data:`stella.contracts.integration.SEND_NOTIFICATION`)
  through its egress guard and with its credential, which never reaches this service. A webhook that refuses
  the message or cannot be reached, or an integration service that does not answer, fails the attempt, and
  the step's retry policy applies.

Each execution returns a :class:`StepResult`; none raises, so a misbehaving step never reaches the caller.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit
from uuid import UUID, uuid4

import aiohttp

from stella.contracts.envelope import ErrorDetail
from stella.contracts.integration import (
    RESOLVE_PLUGINS,
    SEND_NOTIFICATION,
    NotificationSent,
    ResolvePlugins,
    SendNotification,
)
from stella.contracts.workflow import StepStatus
from stella.kit.addresses import AddressPolicy
from stella.kit.asking import Refused, ask
from stella.kit.broker import ServiceClient
from stella.kit.egress import AddressNotAllowed, check_literal_host, guarded_connector
from stella.kit.errors import Unavailable
from stella.plugins import STEP_METHOD, Capability, PluginError, PluginNotFound, PluginRunner, TenantPlugins
from stella.workflow import engine
from stella.workflow.domain.scheduler import StartStep
from stella.workflow.templates import BuiltinStepType

log = logging.getLogger(__name__)

NOTIFY_ANSWER_TIMEOUT_S: Final = 30.0
"""Seconds a notify step waits for the integration service's answer (its webhook requests time out sooner)."""

MAX_BODY_CHARS: Final = 16_384
"""Most characters of an http step's response body kept in its outputs."""

_PLACEHOLDER: Final = re.compile(r"\{\{\s*([A-Za-z_][\w-]*(?:\.[\w-]+)*)\s*\}\}")


@dataclass(frozen=True)
class StepResult:
    """The outcome of one attempt executed here."""

    status: StepStatus
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    logs: str = ""


def _lookup(context: Mapping[str, Any], path: str) -> Any:
    value: Any = context
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(path)
        value = value[part]
    return value


def render(template: Any, context: Mapping[str, Any]) -> Any:
    """Replace every ``{{ path }}`` in the strings of ``template`` by that value of ``context``.

    A string that is one placeholder becomes the value itself (a number stays a number in a JSON body);
    inside a longer string, a value that is not a string is written as JSON.

    Raises:
        KeyError: a placeholder names nothing in ``context``.
    """
    if isinstance(template, str):
        whole = _PLACEHOLDER.fullmatch(template.strip())
        if whole:
            return _lookup(context, whole.group(1))

        def text(match: re.Match[str]) -> str:
            value = _lookup(context, match.group(1))
            return value if isinstance(value, str) else json.dumps(value)

        return _PLACEHOLDER.sub(text, template)
    if isinstance(template, Mapping):
        return {key: render(value, context) for key, value in template.items()}
    if isinstance(template, list):
        return [render(value, context) for value in template]
    return template


class _NotAnswered(Unavailable):
    pass


class PluginsUnavailable(Unavailable):
    """The integration service did not say which plugins the tenant has enabled; nothing was stored."""

    code = "WF_PLUGINS_UNAVAILABLE"
    title = "Plugin instances unavailable"


class StepExecutors:
    """Executes ``http``, ``script`` and ``notify`` attempts.

    Args:
        roots: The service's plugin path: the only directories step plugins are run from.
        runner: Runs each plugin call isolated, with the operator's limits.
        http_allowed_hosts: The hosts ``http`` steps may call.
        http_addresses: The addresses ``http`` steps may connect to (public ones, plus the operator's networks).
        client: The service's client (available once the runtime started), to ask the integration service.
    """

    def __init__(
        self,
        roots: Sequence[Path],
        runner: PluginRunner,
        *,
        http_allowed_hosts: Collection[str] = (),
        http_addresses: AddressPolicy | None = None,
        client: Callable[[], ServiceClient] | None = None,
    ) -> None:
        self.client = client
        self.roots = list(roots)
        self.runner = runner
        self.http_allowed_hosts = tuple(http_allowed_hosts)
        self.http_addresses = http_addresses or AddressPolicy()

    async def step_plugins(self, tenant: UUID, plugin_ids: Collection[str]) -> TenantPlugins:
        """The tenant's instances of the step plugins ``plugin_ids``.

        Raises:
            PluginsUnavailable: the integration service did not answer.
        """
        wanted = sorted({p for p in plugin_ids if p})
        if not wanted:
            return TenantPlugins({}, self.roots, Capability.STEP)
        if self.client is None:
            raise PluginsUnavailable("step plugins need the integration service, which this service cannot reach")
        query = ResolvePlugins(
            tenant_id=tenant, correlation_id=uuid4(), plugin_ids=wanted, capability=Capability.STEP.value
        )
        reply = await self.client().query(RESOLVE_PLUGINS, query, timeout=NOTIFY_ANSWER_TIMEOUT_S)
        if not reply.ok or not isinstance(reply.data, list):
            detail = reply.error.detail if reply.error is not None else "no answer"
            raise PluginsUnavailable(f"the integration service could not say which plugins are enabled: {detail}")
        return TenantPlugins({r["plugin_id"]: r for r in reply.data}, self.roots, Capability.STEP)

    async def execute(self, start: StartStep, *, idempotency_key: str, tenant_id: UUID | None = None) -> StepResult:
        """Execute one attempt of the run's tenant ``tenant_id``; never raises (a failure is a failed result)."""
        try:
            if start.node_type == BuiltinStepType.NOTIFY.value:
                return await self._notify(start, idempotency_key, tenant_id)
            if start.node_type == BuiltinStepType.HTTP.value:
                return await self._http(start, idempotency_key)
            if start.node_type == BuiltinStepType.SCRIPT.value:
                return await self._script(start, idempotency_key, tenant_id)
            return StepResult(StepStatus.FAILED, error=f"step type {start.node_type!r} is not executed here")
        except Exception as exc:
            log.exception("a step execution failed unexpectedly", extra={"node_id": start.node_id})
            return StepResult(StepStatus.FAILED, error=f"the step failed: {type(exc).__name__}: {exc}")

    async def _script(self, start: StartStep, idempotency_key: str, tenant_id: UUID | None) -> StepResult:
        config = start.config
        plugin_id = str(config.get("plugin"))
        if tenant_id is None:
            return StepResult(StepStatus.FAILED, error="script steps cannot run here: the run's tenant is unknown")
        try:
            found = (await self.step_plugins(tenant_id, [plugin_id])).get(plugin_id)
            params = {
                "config": found.params_config(config.get("config")),
                "inputs": dict(start.inputs),
                "attempt": start.attempt,
                "idempotency_key": idempotency_key,
            }
            answer = await self.runner.call(found.plugin, STEP_METHOD, params)
        except PluginsUnavailable as exc:
            return StepResult(StepStatus.FAILED, outputs={"error_code": exc.code}, error=exc.detail)
        except PluginNotFound as exc:
            return StepResult(StepStatus.FAILED, outputs={"error_code": exc.code}, error=str(exc))
        except PluginError as exc:
            log.warning(
                "a step plugin failed; the step's retry policy applies",
                extra={"plugin": plugin_id, "node_id": start.node_id, "error": exc.code, "detail": exc.detail},
            )
            return StepResult(StepStatus.FAILED, outputs={"error_code": exc.code}, error=str(exc))
        if not isinstance(answer, dict) or not isinstance(answer.get("outputs", {}), dict):
            return StepResult(StepStatus.FAILED, error=f"plugin {plugin_id!r} answered without an outputs object")
        outputs = answer.get("outputs", {})
        raw_logs = answer.get("logs")
        logs = raw_logs if isinstance(raw_logs, str) else ""
        if answer.get("succeeded", True) is not True:
            error = answer.get("error") if isinstance(answer.get("error"), str) else "the plugin reported a failure"
            return StepResult(StepStatus.FAILED, outputs=outputs, error=error, logs=logs)
        return StepResult(StepStatus.SUCCEEDED, outputs=outputs, logs=logs)

    async def _notify(self, start: StartStep, idempotency_key: str, tenant_id: UUID | None) -> StepResult:
        config = start.config
        try:
            engine.check_notify_config(config)
        except engine.InvalidStepConfig as exc:
            return StepResult(StepStatus.FAILED, error=exc.detail)
        if self.client is None or tenant_id is None:
            return StepResult(StepStatus.FAILED, error="notify steps cannot run here: no integration service client")
        try:
            message = render(config["message"], start.inputs)
            fields = render(config.get("fields", {}), start.inputs)
        except KeyError as exc:
            return StepResult(
                StepStatus.FAILED, error=f"a template names {exc.args[0]!r}, which the step's inputs lack"
            )
        request = SendNotification(
            tenant_id=tenant_id,
            correlation_id=uuid4(),
            integration=config["integration"],
            message=message if isinstance(message, str) else json.dumps(message),
            fields={str(k): v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()},
            idempotency_key=idempotency_key,
        )
        name = config["integration"]

        def unavailable(error: ErrorDetail) -> Exception:
            return _NotAnswered(error.detail)

        try:
            sent = await ask(
                self.client(),
                SEND_NOTIFICATION,
                request,
                NotificationSent,
                timeout=NOTIFY_ANSWER_TIMEOUT_S,
                unavailable=unavailable,
            )
        except Refused as exc:
            return StepResult(
                StepStatus.FAILED,
                outputs={"error_code": exc.code},
                error=f"notification integration {name!r}: {exc.detail}",
            )
        except _NotAnswered as exc:
            return StepResult(
                StepStatus.FAILED,
                error=f"the notification through integration {name!r} was not delivered: {exc.detail}",
            )
        outputs = {"integration_id": str(sent.integration_id), "integration": sent.name, "status": sent.status}
        return StepResult(StepStatus.SUCCEEDED, outputs=outputs, logs=f"notified through {sent.name}: {sent.detail}")

    async def _http(self, start: StartStep, idempotency_key: str) -> StepResult:
        config = start.config
        try:
            engine.check_http_config(config, self.http_allowed_hosts)
        except engine.InvalidStepConfig as exc:
            # The allow-list may have shrunk since the template was saved.
            return StepResult(StepStatus.FAILED, error=exc.detail)
        url, method = config["url"], config.get("method", "GET")
        expected = config.get("expected_status", 200)
        expected = expected if isinstance(expected, list) else [expected]
        try:
            headers = {str(k): str(v) for k, v in render(config.get("headers", {}), start.inputs).items()}
            body = render(config.get("body"), start.inputs) if "body" in config else None
        except KeyError as exc:
            return StepResult(
                StepStatus.FAILED, error=f"a template names {exc.args[0]!r}, which the step's inputs lack"
            )
        headers.setdefault("Idempotency-Key", idempotency_key)
        data: bytes | None = None
        if isinstance(body, str):
            data = body.encode()
        elif body is not None:
            data = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        host = urlsplit(url).hostname or ""
        try:
            check_literal_host(host, self.http_addresses, purpose="an http step")
            connector = guarded_connector(self.http_addresses, purpose="an http step", limit=4)
            timeout = aiohttp.ClientTimeout(total=float(config.get("timeout_s", 30)))
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                session.request(method, url, headers=headers, data=data, allow_redirects=False) as response,
            ):
                raw = await _read_capped(response.content, MAX_BODY_CHARS * 4)
                status = response.status
                content_type = response.content_type
        except AddressNotAllowed as exc:
            return StepResult(
                StepStatus.FAILED,
                error=f"{exc} (the operator allows networks in STELLA_WORKFLOW_HTTP_ALLOWED_NETWORKS)",
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, AddressNotAllowed) else exc
            return StepResult(StepStatus.FAILED, error=f"{method} {url} failed: {type(cause).__name__}: {cause}")
        text = raw.decode(errors="replace")[:MAX_BODY_CHARS]
        outputs: dict[str, Any] = {"status": status, "body": text}
        if content_type == "application/json":
            with contextlib.suppress(ValueError):
                outputs["json"] = json.loads(raw)
        logs = f"{method} {url} -> {status}"
        if status not in expected:
            expected_text = " or ".join(map(str, expected))
            return StepResult(
                StepStatus.FAILED,
                outputs=outputs,
                error=f"{method} {url} answered {status}, expected {expected_text}",
                logs=logs,
            )
        return StepResult(StepStatus.SUCCEEDED, outputs=outputs, logs=logs)


async def _read_capped(stream: aiohttp.StreamReader, cap: int) -> bytes:
    """The body, up to ``cap`` bytes (the rest is not read)."""
    body = bytearray()
    while len(body) < cap:
        chunk = await stream.read(cap - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)
