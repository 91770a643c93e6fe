"""The step types and workflow templates that ship with the product (``tenant_id = None``).

Built-in templates are plain data: the I/O layer stores them (with :func:`builtin_template_id` as their row
id, the same on every installation) and validates them like any other template.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final
from uuid import UUID, uuid5

from stella.workflow.domain.errors import TemplateNotFound
from stella.workflow.domain.states import RunOn
from stella.workflow.domain.template import Edge, InputSpec, Node, RetryPolicy, WorkflowTemplate


class BuiltinStepType(StrEnum):
    """Step types the core provides; plugins register more under their own names."""

    GATE = "gate"
    APPROVAL = "approval"
    DEPLOY = "deploy"
    HEALTH_CHECK = "health-check"
    VERIFY_DRIFT = "verify-drift"
    EVIDENCE = "evidence"
    NOTIFY = "notify"
    WAIT = "wait"
    SCRIPT = "script"
    HTTP = "http"


BUILTIN_STEP_TYPES: Final[frozenset[str]] = frozenset(member.value for member in BuiltinStepType)
"""The names of every built-in step type (pass them, plus plugin types, to ``validate_template``)."""

APPROVAL_STEP_TIMEOUT_S: Final = 7 * 86_400.0 + 3_600.0
"""The approval step's timeout: the 7-day approval timeout plus an hour.

The approval service expires a request after 7 days and reports it as denied; the step's own timeout is a
backstop one hour later, so the approval service's answer (with its votes) normally arrives first.
"""

PROMOTION_INPUTS: Final[tuple[InputSpec, ...]] = (
    InputSpec(name="promotion_id", description="The promotion this run decides."),
    InputSpec(name="release_id", description="The release being promoted."),
    InputSpec(name="environment_id", description="The target environment."),
    InputSpec(name="requested_by", description="The principal who requested the promotion."),
    InputSpec(
        name="approval_required",
        required=False,
        default=True,
        description="Whether the environment needs approvals (false skips the approval step).",
    ),
    # The approval step's executor opens the request from these; the promotion service sends them
    # with every run, so the template must declare them or the run would be refused.
    InputSpec(
        name="required_approvals",
        required=False,
        default=1,
        description="How many distinct eligible approvals the environment needs.",
    ),
    InputSpec(
        name="require_sod",
        required=False,
        default=False,
        description="Whether the requester is barred from approving (separation of duties).",
    ),
    InputSpec(
        name="approver_groups",
        required=False,
        default=[],
        description="Groups whose members may approve; empty means any principal with the permission.",
    ),
    InputSpec(
        name="approval_timeout_s",
        required=False,
        default=None,
        description="Seconds the approval request stays open (the environment's setting; none: the approval service's default).",
    ),
)
"""The inputs every promotion's run is started with (each version of ``standard-promotion`` declares them)."""

DEPLOY_STEP_TIMEOUT_S: Final = 24 * 3_600.0
"""The deploy step's backstop timeout: a day (the deployment service ends a job by its own timeouts first)."""

HEALTH_CHECK_STEP_TIMEOUT_S: Final = 3_600.0
"""The health-check step's backstop timeout."""

STANDARD_PROMOTION: Final = WorkflowTemplate(
    name="standard-promotion",
    version=1,
    tenant_id=None,
    description=(
        "Evaluate the promotion's gates, collect its approvals, then record the decision as evidence. "
        "The evidence step runs whatever the outcome (run_on: always), so a rejected promotion is recorded "
        "too. Later versions append deploy and health-check between approval and evidence."
    ),
    nodes=(
        Node(
            id="gates",
            type=BuiltinStepType.GATE.value,
            config={},
            # A gate that errors denies (fail closed); re-evaluating could flip a recorded decision, so
            # the gate step is not retried. No timeout: a promotion held by a freeze window waits for the
            # window to open (or an override), which may be days away; the promotion service completes it.
            retry=RetryPolicy(max_attempts=1),
            timeout_s=None,
        ),
        Node(
            id="approval",
            type=BuiltinStepType.APPROVAL.value,
            config={},
            # A denied approval is a decision, not a transient fault: never re-ask.
            retry=RetryPolicy(max_attempts=1),
            timeout_s=APPROVAL_STEP_TIMEOUT_S,
            # An environment that needs no approvals skips the step; evidence still runs.
            when="inputs.approval_required",
        ),
        Node(
            id="evidence",
            type=BuiltinStepType.EVIDENCE.value,
            config={"packet_type": "release_decision"},
            # Signing and storing a packet can hit a transient fault; the evidence service is idempotent
            # per attempt key, and a retry uses a new key only after the previous attempt failed.
            retry=RetryPolicy(max_attempts=3, backoff_s=10.0),
            timeout_s=300.0,
            run_on=RunOn.ALWAYS,
        ),
    ),
    edges=(Edge("gates", "approval"), Edge("approval", "evidence")),
    inputs=PROMOTION_INPUTS,
    outputs={
        "approved": 'steps.gates.status == "succeeded" && steps.approval.status != "failed"',
        "gates": "steps.gates.outputs",
        "approval": "steps.approval.outputs",
        "evidence": "steps.evidence.outputs",
    },
)
"""``gates -> approval -> evidence``: a gates or approval failure skips what follows on the success path,
but evidence (``run_on: always``) records the decision either way; the run then fails, which tells the
promotion service the promotion was rejected."""

STANDARD_PROMOTION_V2: Final = WorkflowTemplate(
    name="standard-promotion",
    version=2,
    tenant_id=None,
    description=(
        "Evaluate the promotion's gates, collect its approvals, deploy the release to the environment's targets "
        "with its strategy, check their health, then record the outcome as evidence. The evidence step runs "
        "whatever the outcome (run_on: always), so a rejected or failed promotion is recorded too."
    ),
    nodes=(
        STANDARD_PROMOTION.nodes[0],
        STANDARD_PROMOTION.nodes[1],
        Node(
            id="deploy",
            type=BuiltinStepType.DEPLOY.value,
            config={},
            # A deployment is never started twice blindly: the deployment service rolls back or reports a
            # failure itself, and a new attempt is a new promotion. Its timeout is a backstop only: the
            # deployment service enforces the environment's deployment and task timeouts.
            retry=RetryPolicy(max_attempts=1),
            timeout_s=DEPLOY_STEP_TIMEOUT_S,
        ),
        Node(
            id="health-check",
            type=BuiltinStepType.HEALTH_CHECK.value,
            config={},
            retry=RetryPolicy(max_attempts=1),
            timeout_s=HEALTH_CHECK_STEP_TIMEOUT_S,
        ),
        STANDARD_PROMOTION.nodes[2],
    ),
    # gates -> deploy as well: an environment without approvals skips the approval step, and a step whose
    # predecessors were all skipped is skipped too; with the gate step as a second predecessor the
    # deployment runs after allowing gates, and after the approvals when there are some.
    edges=(
        Edge("gates", "approval"),
        Edge("gates", "deploy"),
        Edge("approval", "deploy"),
        Edge("deploy", "health-check"),
        Edge("health-check", "evidence"),
    ),
    inputs=PROMOTION_INPUTS,
    outputs={
        "approved": 'steps.gates.status == "succeeded" && steps.approval.status != "failed"',
        "deployed": 'steps.deploy.status == "succeeded" && steps["health-check"].status == "succeeded"',
        "gates": "steps.gates.outputs",
        "approval": "steps.approval.outputs",
        "deployment": "steps.deploy.outputs",
        "health": 'steps["health-check"].outputs',
        "evidence": "steps.evidence.outputs",
    },
)
"""``gates -> approval -> deploy -> health-check -> evidence``: a denied gate, a rejected approval or a failed
deployment skips what follows on the success path; evidence (``run_on: always``) records the outcome either
way. Runs started with version 1 keep it (a run pins its version)."""

BUILTIN_TEMPLATES: Final[tuple[WorkflowTemplate, ...]] = (STANDARD_PROMOTION, STANDARD_PROMOTION_V2)
"""Every built-in template version, oldest first."""

_BUILTIN_NAMESPACE: Final = UUID("b75717c4-43f2-492d-aebf-ffc4694fc642")


def builtin_template_id(name: str, version: int) -> UUID:
    """The row id of a built-in template version: a name-based UUID, identical on every installation."""
    return uuid5(_BUILTIN_NAMESPACE, f"{name}@{version}")


def builtin_template(name: str, version: int | None = None) -> WorkflowTemplate:
    """Return a built-in template: the given version, or the latest one.

    Raises:
        TemplateNotFound: when no built-in template has this name (and version).
    """
    versions = [t for t in BUILTIN_TEMPLATES if t.name == name]
    if version is not None:
        versions = [t for t in versions if t.version == version]
    if not versions:
        wanted = name if version is None else f"{name} version {version}"
        raise TemplateNotFound(f"no built-in workflow template {wanted}")
    return max(versions, key=lambda t: t.version)
