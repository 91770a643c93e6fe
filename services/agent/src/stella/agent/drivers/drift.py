"""Drift: what the sticker says a target runs against what actually runs there (reference §4).

Differences (``DriftReport.differences``), each ``{"kind", "component", "expected", "actual", ...}``:

``missing_sticker``
    The target has no sticker, or one that cannot be read (then ``sticker_found`` is true and ``detail``
    says why). What runs is then compared with the task's components, when it names any.
``missing_container``
    A component the sticker names has no container.
``stopped_container``
    Its container exists but does not run (``state``); ``actual`` is the digest it would run.
``digest``
    Its container runs another digest than the sticker's (``actual`` is None for an image pulled by no
    digest; ``image`` and ``image_id`` say what it is).
``unexpected_container``
    A container carrying this target's ``stella.*`` labels that the sticker does not name, or a second
    container for a component (``container`` names it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stella.agent.drivers.engine import RunningContainer
from stella.agent.drivers.files import sticker_components
from stella.contracts.agent import ComponentSpec, ComponentState, DriftReport


def _repository(container: RunningContainer) -> str | None:
    name, separator, _ = container.image.rpartition("@")
    return name if separator else None


def _primary(containers: list[RunningContainer], preferred_name: str | None) -> RunningContainer:
    for container in containers:
        if container.name == preferred_name:
            return container
    running = [container for container in containers if container.running]
    return (running or containers)[0]


def assess_drift(
    *,
    sticker: dict[str, Any] | None,
    sticker_problem: str | None,
    fallback: Sequence[ComponentSpec],
    containers: Sequence[RunningContainer],
    preferred_names: dict[str, str] | None = None,
) -> tuple[DriftReport, list[ComponentState]]:
    """Compare the sticker with what runs.

    Args:
        sticker: The sticker read from the target, None when missing or unreadable.
        sticker_problem: Why the sticker could not be read, when it exists but is unreadable.
        fallback: Components expected when there is no sticker (the task's).
        containers: Every container of the target (Stella-labelled or found by the target's names).
        preferred_names: The container name each component's container should have, when the target
            type fixes one; a second container for the component is then the unexpected one.

    Returns:
        The report and, per component, what runs (expected components first, then unexpected containers).
    """
    differences: list[dict[str, Any]] = []
    expected: dict[str, str | None] = {}
    repositories: dict[str, str] = {component.name: component.image_repository for component in fallback}
    if sticker is not None:
        for component in sticker_components(sticker):
            expected[component["name"]] = component["digest"]
    else:
        difference: dict[str, Any] = {"kind": "missing_sticker", "component": None, "expected": None, "actual": None}
        if sticker_problem:
            difference["detail"] = sticker_problem
        differences.append(difference)
        expected = {component.name: component.digest for component in fallback}

    by_component: dict[str, list[RunningContainer]] = {}
    states: list[ComponentState] = []
    unexpected: list[RunningContainer] = []
    for container in containers:
        if container.component is not None and container.component in expected:
            by_component.setdefault(container.component, []).append(container)
        else:
            unexpected.append(container)

    for name, digest in expected.items():
        found = by_component.get(name, [])
        if not found:
            differences.append({"kind": "missing_container", "component": name, "expected": digest, "actual": None})
            states.append(ComponentState(name=name, expected_digest=digest, state="missing"))
            continue
        primary = _primary(found, (preferred_names or {}).get(name))
        unexpected.extend(container for container in found if container is not primary)
        actual = primary.digest(repositories.get(name) or _repository(primary), digest)
        states.append(
            ComponentState(
                name=name,
                expected_digest=digest,
                running_digest=actual if primary.running else None,
                container=primary.name,
                state=primary.status,
            )
        )
        if not primary.running:
            differences.append(
                {
                    "kind": "stopped_container",
                    "component": name,
                    "expected": digest,
                    "actual": actual,
                    "container": primary.name,
                    "state": primary.status,
                }
            )
        elif actual != digest:
            differences.append(
                {
                    "kind": "digest",
                    "component": name,
                    "expected": digest,
                    "actual": actual,
                    "container": primary.name,
                    "image": primary.image,
                    "image_id": primary.image_id,
                }
            )

    for container in unexpected:
        actual = container.digest(_repository(container))
        differences.append(
            {
                "kind": "unexpected_container",
                "component": container.component,
                "expected": None,
                "actual": actual,
                "container": container.name,
                "state": container.status,
            }
        )
        states.append(
            ComponentState(
                name=container.component or container.name,
                running_digest=actual if container.running else None,
                container=container.name,
                state=container.status,
            )
        )
    report = DriftReport(
        drifted=bool(differences),
        sticker_found=sticker is not None or sticker_problem is not None,
        differences=differences,
    )
    return report, states
