"""The step types the workflow service executes itself: started after the commit, checked when saved."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from stella.workflow import engine
from stella.workflow.domain.run import new_run
from stella.workflow.domain.states import StepStatus
from stella.workflow.domain.template import WorkflowTemplate
from stella.workflow.domain.validation import validate_template
from stella.workflow.executors import render
from stella.workflow.templates import BUILTIN_STEP_TYPES

T0 = datetime(2025, 1, 1, tzinfo=UTC)
RUN_ID = uuid.UUID(int=1)


def build(nodes: list[dict[str, Any]], edges: Sequence[tuple[str, str]] = ()) -> WorkflowTemplate:
    data = {"name": "flow", "version": 1, "nodes": nodes, "edges": [{"from": a, "to": b} for a, b in edges]}
    return validate_template(data, BUILTIN_STEP_TYPES)


def started(template: WorkflowTemplate) -> engine.Progress:
    created = new_run(
        run_id=RUN_ID, tenant_id=uuid.UUID(int=2), template=template, template_id=RUN_ID, inputs={}, now=T0
    )
    return engine.begin(template, created.run, created.steps, now=T0)


def test_http_script_and_notify_attempts_stay_running_and_are_handed_to_the_caller() -> None:
    template = build(
        [
            {"id": "hook", "type": "http", "config": {"url": "https://x.example"}, "timeout_s": 30},
            {"id": "smoke", "type": "script", "config": {"plugin": "p"}, "timeout_s": 30},
            {"id": "ping", "type": "notify", "config": {"integration": "chat", "message": "hi"}, "timeout_s": 30},
            {"id": "gates", "type": "gate"},
        ]
    )

    progress = started(template)

    assert [(e.node_id, e.attempt) for e in progress.executions] == [("hook", 1), ("smoke", 1), ("ping", 1)]
    for node_id in ("hook", "smoke", "ping"):
        assert progress.steps[node_id].status is StepStatus.RUNNING
    assert [d.start.node_id for d in progress.dispatches] == ["gates"]


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"message": "hi"}, "needs config.integration"),
        ({"integration": "", "message": "hi"}, "needs config.integration"),
        ({"integration": "chat"}, "needs config.message"),
        ({"integration": "chat", "message": ""}, "needs config.message"),
        ({"integration": "chat", "message": "hi", "fields": {"n": 3}}, "config.fields"),
        ({"integration": "chat", "message": "hi", "url": "http://x"}, "unknown field(s) url"),
    ],
)
def test_a_notify_step_without_its_integration_or_message_is_refused_when_saved(
    config: dict[str, Any], words: str
) -> None:
    template = build([{"id": "ping", "type": "notify", "config": config, "timeout_s": 30}])

    with pytest.raises(engine.InvalidStepConfig) as refused:
        engine.check_step_configs(template)

    assert words in refused.value.detail
    assert "step 'ping'" in refused.value.detail


def test_a_notify_step_needs_a_timeout() -> None:
    template = build([{"id": "ping", "type": "notify", "config": {"integration": "chat", "message": "hi"}}])

    with pytest.raises(engine.InvalidStepConfig, match="needs timeout_s"):
        engine.check_step_configs(template)

    engine.check_step_configs(
        build(
            [
                {
                    "id": "ping",
                    "type": "notify",
                    "config": {"integration": "chat", "message": "{{ inputs.v }}", "fields": {"env": "prod"}},
                    "timeout_s": 30,
                }
            ]
        )
    )


def _url_problem(
    config: Mapping[str, Any], hosts: Sequence[str] = ("api.example.com", "*.hooks.example")
) -> str | None:
    try:
        engine.check_http_config(config, hosts)
    except engine.InvalidStepConfig as exc:
        return exc.detail
    return None


def test_the_host_allow_list_takes_exact_names_and_subdomain_wildcards() -> None:
    assert _url_problem({"url": "https://api.example.com/v1"}) is None
    assert _url_problem({"url": "https://a.hooks.example/x"}) is None
    assert "allow-list" in (_url_problem({"url": "https://hooks.example/x"}) or "")
    assert "allow-list" in (_url_problem({"url": "https://evil-api.example.com/"}) or "")
    assert "allow-list" in (_url_problem({"url": "https://api.example.com.evil.example/"}) or "")
    assert "allow-list" in (_url_problem({"url": "https://api.example.com/"}, hosts=()) or "")


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"url": "https://user:pw@api.example.com/"}, "credentials"),
        ({"url": "https://api.example.com/", "expected_status": 42}, "expected_status"),
        ({"url": "https://api.example.com/", "expected_status": []}, "expected_status"),
        ({"url": "https://api.example.com/", "headers": {"X": 1}}, "headers"),
        ({"url": "https://api.example.com/", "timeout_s": 0}, "timeout_s"),
        ({"url": "https://api.example.com/", "shell": "rm"}, "unknown field"),
    ],
)
def test_an_http_config_that_cannot_work_is_refused(config: dict[str, Any], words: str) -> None:
    assert words in (_url_problem(config) or "")


def test_a_script_step_must_name_an_enabled_step_plugin_and_fit_its_schema() -> None:
    plugins = {"smoke-test": lambda config: [] if "command" in config else ["command is required"]}
    template = build([{"id": "s", "type": "script", "config": {"plugin": "smoke-test", "config": {}}, "timeout_s": 9}])
    with pytest.raises(engine.InvalidStepConfig, match="command is required"):
        engine.check_step_configs(template, step_plugins=plugins)
    missing = build([{"id": "s", "type": "script", "config": {"plugin": "other"}, "timeout_s": 9}])
    with pytest.raises(engine.StepPluginNotEnabled, match=r"names none \(disabled\)"):
        engine.check_step_configs(missing, step_plugins=plugins, plugin_problem=lambda _: "disabled")
    untimed = build([{"id": "s", "type": "script", "config": {"plugin": "smoke-test", "config": {"command": []}}}])
    with pytest.raises(engine.InvalidStepConfig, match="needs timeout_s"):
        engine.check_step_configs(untimed, step_plugins=plugins)


def test_templates_take_values_from_the_inputs() -> None:
    context = {"inputs": {"name": "shop", "replicas": 3}, "steps": {"build": {"outputs": {"tag": "1.2"}}}}
    body = {
        "app": "{{ inputs.name }}",
        "n": "{{inputs.replicas}}",
        "text": "{{ inputs.name }}@{{ steps.build.outputs.tag }} x{{ inputs.replicas }}",
    }
    assert render(body, context) == {"app": "shop", "n": 3, "text": "shop@1.2 x3"}
    assert render(["{{ inputs.name }}", 7], context) == ["shop", 7]
    with pytest.raises(KeyError):
        render("{{ inputs.missing }}", context)
