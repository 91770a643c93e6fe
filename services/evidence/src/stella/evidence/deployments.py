"""Content of the ``deployment``, ``rollback`` and ``drift`` packets, built from the deployment service's events.

Pure: the handler reads the release (for its image repositories) before the transaction and passes it in.
Every packet's ``release.components`` name images (``image_repository`` + ``digest``): they become the
statement's subjects, so a verifier sees which images a deployment, a rollback or a drift is about.

* ``deployment``: a job ended. Targets, digests, strategy, each task's outcome with its lock file's, logs' and
  sticker's hashes, the job's artifacts, and one ``logs_hash`` over every task's logs.
* ``rollback``: a job rolled targets back, automatically (outcome ``rolled_back``: its ``rollback`` tasks) or as
  a manual rollback job (``rollback_of`` set). Its components add each restored ``previous_digest``.
* ``drift``: an inspection found a target differing from its sticker: expected and actual digests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from stella.contracts.deployment import DriftDetected, JobCompleted, TaskOutcome
from stella.contracts.release import ReleaseView
from stella.evidence.packet import PacketType, format_timestamp

ROLLBACK_TASK: Final = "rollback"
"""Task type of the tasks that restore a previous digest."""


def packet_types_of(event: JobCompleted) -> list[PacketType]:
    """The packets a job's end makes: ``deployment`` for a deployment job, ``rollback`` when it rolled back."""
    if event.rollback_of is not None:
        return [PacketType.ROLLBACK]
    if event.outcome == "rolled_back":
        return [PacketType.DEPLOYMENT, PacketType.ROLLBACK]
    return [PacketType.DEPLOYMENT]


def job_source_key(packet_type: PacketType, event: JobCompleted) -> str:
    """One packet per job and packet type, however often the job's end is delivered."""
    return f"{packet_type}:{event.job_id}"


def drift_source_key(event: DriftDetected) -> str:
    """One packet per drift record: the target and the instant the drift was detected."""
    return f"drift:{event.target_id}:{format_timestamp(event.detected_at)}"


def _component(name: str, repository: str, digest: str, release: ReleaseView | None, role: str) -> dict[str, Any]:
    known = {c.name: c for c in release.components} if release is not None else {}
    pinned = known.get(name)
    same = pinned is not None and pinned.digest == digest
    return {
        "name": name,
        "digest": digest,
        "image_repository": repository,
        "semver": pinned.semver if same and pinned is not None else None,
        "tag": pinned.tag if same and pinned is not None else None,
        "role": role,
    }


def _repositories(release: ReleaseView | None) -> dict[str, str]:
    return {c.name: c.image_repository for c in release.components} if release is not None else {}


def release_components(release: ReleaseView | None, tasks: Iterable[TaskOutcome], *, restored: bool) -> list[dict]:
    """The images a job is about: the release's components, plus each restored previous digest for a rollback.

    A component a task deployed that the release does not list (a rollback job's release differs) is named by
    the repository of the release component of the same name, when there is one.
    """
    repositories = _repositories(release)
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    if release is not None:
        for c in release.components:
            found[(c.name, c.digest, "deployed")] = _component(
                c.name, c.image_repository, c.digest, release, "deployed"
            )
    for task in tasks:
        for deployed in task.components:
            repository = repositories.get(deployed.name)
            if repository is None:
                continue
            if task.type != ROLLBACK_TASK:
                key = (deployed.name, deployed.digest, "deployed")
                found.setdefault(key, _component(deployed.name, repository, deployed.digest, release, "deployed"))
            if restored:
                digest = deployed.digest if task.type == ROLLBACK_TASK else deployed.previous_digest
                if digest is not None:
                    key = (deployed.name, digest, "restored")
                    found.setdefault(key, _component(deployed.name, repository, digest, release, "restored"))
    return [found[key] for key in sorted(found)]


def task_record(task: TaskOutcome) -> dict[str, Any]:
    """One task's outcome as the packet records it."""
    return {
        "task_id": str(task.task_id),
        "target_id": str(task.target_id),
        "target_name": task.target_name,
        "type": str(task.type),
        "status": str(task.status),
        "components": [
            {"name": c.name, "digest": c.digest, "previous_digest": c.previous_digest}
            for c in sorted(task.components, key=lambda c: c.name)
        ],
        "error_code": task.error_code,
        "lock_file_hash": task.lock_file_hash,
        "logs_hash": task.logs_hash,
        "sticker_hash": task.sticker_hash,
    }


def logs_hash(tasks: Sequence[TaskOutcome]) -> str | None:
    """``sha256:`` over every task's logs hash in task order (None when no task kept logs)."""
    hashes = [f"{t.task_id}={t.logs_hash}" for t in sorted(tasks, key=lambda t: str(t.task_id)) if t.logs_hash]
    if not hashes:
        return None
    return "sha256:" + hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def job_content(packet_type: PacketType, event: JobCompleted, release: ReleaseView | None) -> dict[str, Any]:
    """The content of a job's ``deployment`` or ``rollback`` packet."""
    rollback = packet_type is PacketType.ROLLBACK
    tasks = sorted(event.tasks, key=lambda t: (t.target_name, str(t.task_id)))
    # An automatic rollback's packet records the rollback's own tasks; the deployment packet records them all.
    automatic = rollback and event.rollback_of is None
    recorded = [t for t in tasks if t.type == ROLLBACK_TASK] if automatic else tasks
    targets: dict[str, dict[str, Any]] = {}
    for task in tasks:
        targets.setdefault(str(task.target_id), {"id": str(task.target_id), "name": task.target_name})
    execution: dict[str, Any] = {
        "deployment_job_id": str(event.job_id),
        "promotion_id": None if event.promotion_id is None else str(event.promotion_id),
        "strategy": event.strategy,
        "outcome": event.outcome,
        "reason": event.reason,
        "finished_at": format_timestamp(event.finished_at),
        "tasks": [task_record(t) for t in recorded],
        "artifacts": sorted((dict(a) for a in event.artifacts), key=lambda a: (str(a.get("type")), str(a.get("name")))),
        "logs_hash": logs_hash(recorded),
    }
    content: dict[str, Any] = {
        "release": {
            "id": str(event.release_id),
            "name": release.name if release is not None else event.release_name,
            "components": release_components(release, recorded, restored=rollback),
        },
        "environment": {
            "id": str(event.environment_id),
            "name": event.environment_name,
            "targets": [targets[k] for k in sorted(targets)],
        },
        "execution": execution,
    }
    if rollback:
        content["previous"] = {
            "rollback_of": str(event.rollback_of if event.rollback_of is not None else event.job_id),
            "automatic": event.rollback_of is None,
        }
    return content


def drift_content(event: DriftDetected, release: ReleaseView | None) -> dict[str, Any]:
    """The content of a ``drift`` packet: the sticker's release and what differs, expected and actual digests."""
    repositories = _repositories(release)
    differences = sorted(
        (_difference(d) for d in event.differences),
        key=lambda d: (str(d.get("component")), str(d.get("kind"))),
    )
    components = {
        (c.name, c.digest, "expected"): _component(c.name, c.image_repository, c.digest, release, "expected")
        for c in (release.components if release is not None else [])
    }
    for difference in differences:
        name, actual = difference.get("component"), difference.get("actual")
        repository = repositories.get(name) if isinstance(name, str) else None
        if repository is not None and isinstance(actual, str) and actual.startswith("sha256:"):
            components.setdefault(
                (str(name), actual, "actual"), _component(str(name), repository, actual, release, "actual")
            )
    return {
        "release": {
            "id": None if event.release_id is None else str(event.release_id),
            "name": release.name if release is not None else None,
            "components": [components[key] for key in sorted(components)],
        },
        "environment": {
            "id": str(event.environment_id),
            "targets": [{"id": str(event.target_id), "name": event.target_name}],
        },
        "execution": {
            "target_id": str(event.target_id),
            "detected_at": format_timestamp(event.detected_at),
            "sticker_found": event.sticker_found,
            "differences": differences,
        },
    }


def _difference(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {key: raw.get(key) for key in ("kind", "component", "expected", "actual")}
