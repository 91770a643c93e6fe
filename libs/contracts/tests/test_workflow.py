"""Step completions: one message id per attempt, whoever writes the result."""

from __future__ import annotations

from uuid import UUID

from stella.contracts.workflow import (
    PROMOTION_RUN_INPUTS,
    EdgeSpec,
    ExecuteStep,
    NodeSpec,
    StepRef,
    StepStatus,
    promotion_template_problems,
)


def _execute(attempt: int, message_id: int) -> ExecuteStep:
    return ExecuteStep(
        message_id=UUID(int=message_id),
        tenant_id=UUID(int=1),
        correlation_id=UUID(int=2),
        run_id=UUID(int=3),
        node_id="evidence",
        attempt=attempt,
        step_type="evidence",
        config={},
        inputs={},
    )


def test_a_completion_names_its_attempt_and_is_caused_by_the_command() -> None:
    command = _execute(2, 10)
    done = command.complete(StepStatus.SUCCEEDED, outputs={"packet_id": "p"}, logs="signed")
    assert (done.run_id, done.node_id, done.attempt) == (UUID(int=3), "evidence", 2)
    assert (done.tenant_id, done.correlation_id, done.causation_id) == (UUID(int=1), UUID(int=2), UUID(int=10))
    assert (done.status, done.outputs, done.logs, done.error) == (
        StepStatus.SUCCEEDED,
        {"packet_id": "p"},
        "signed",
        None,
    )


def test_the_same_attempt_always_gets_the_same_message_id() -> None:
    first = _execute(2, 10).complete(StepStatus.SUCCEEDED)
    redelivered = _execute(2, 11).complete(StepStatus.FAILED, error="boom")
    from_ref = StepRef(run_id=UUID(int=3), node_id="evidence", attempt=2).completion(
        tenant_id=UUID(int=1), correlation_id=UUID(int=9), causation_id=None, status=StepStatus.SUCCEEDED
    )
    assert first.message_id == redelivered.message_id == from_ref.message_id
    assert _execute(3, 10).complete(StepStatus.SUCCEEDED).message_id != first.message_id


def _node(node_id: str, kind: str) -> NodeSpec:
    return NodeSpec(id=node_id, type=kind)


def test_a_complete_promotion_template_has_no_problems() -> None:
    inputs = {name: {"required": True} for name in PROMOTION_RUN_INPUTS} | {"extra": {"required": False}}
    nodes = [_node("gates", "gate"), _node("approval", "approval"), _node("proof", "evidence")]
    edges = [EdgeSpec(source="gates", target="approval"), EdgeSpec(source="approval", target="proof")]
    assert promotion_template_problems(inputs, nodes, edges, needs_approval=True) == []


def test_every_reason_a_template_cannot_run_a_promotion_is_named() -> None:
    inputs = {"promotion_id": {}, "ticket": {"required": True}}
    nodes = [_node("approval", "approval")]
    problems = promotion_template_problems(inputs, nodes, [], needs_approval=True)
    assert any("release_id" in p and "does not declare" in p for p in problems)
    assert any("ticket" in p for p in problems)
    assert any("no 'gate' step" in p for p in problems)
    no_approval = promotion_template_problems(
        {key: {"required": False} for key in PROMOTION_RUN_INPUTS}, [_node("gates", "gate")], [], needs_approval=True
    )
    assert no_approval == ["the environment requires approvals but the template has no 'approval' step"]
    assert (
        promotion_template_problems(
            {key: {"required": False} for key in PROMOTION_RUN_INPUTS},
            [_node("gates", "gate")],
            [],
            needs_approval=False,
        )
        == []
    )


def test_a_deploy_step_must_run_after_the_gates_and_approvals() -> None:
    inputs = {key: {"required": False} for key in PROMOTION_RUN_INPUTS}
    nodes = [_node("gates", "gate"), _node("approval", "approval"), _node("ship", "deploy")]
    beside = [EdgeSpec(source="gates", target="approval"), EdgeSpec(source="gates", target="ship")]
    after = [*beside, EdgeSpec(source="approval", target="ship")]

    assert promotion_template_problems(inputs, nodes, after, needs_approval=True) == []
    assert promotion_template_problems(inputs, nodes, beside, needs_approval=True) == [
        "its deploy step 'ship' does not run after 'approval'; a promotion deploys only once its gates and "
        "approvals allow it"
    ]
