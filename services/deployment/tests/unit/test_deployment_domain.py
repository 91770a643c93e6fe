"""The deployment domain without any I/O: planning by strategy, the job state machine, agents, stickers."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from stella.contracts.agent import AgentStatus, TargetType, TaskStatus, TaskType
from stella.contracts.canonical import CanonicalizationError, content_hash
from stella.contracts.deployment import DeployedComponent, JobKind, JobStatus, Strategy, StrategySpec
from stella.deployment import domain

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
OLD = "sha256:" + "1" * 64
NEW = "sha256:" + "2" * 64
RELEASE = [domain.ComponentRef(name="api", digest=NEW)]


def targets(count: int, **labels: str) -> list[domain.TargetInfo]:
    return [
        domain.TargetInfo(uuid.UUID(int=index + 1), f"t{index:02d}", dict(labels), {"api": OLD})
        for index in range(count)
    ]


def spec(**fields: object) -> StrategySpec:
    return StrategySpec.model_validate(fields)


# --- planning -----------------------------------------------------------------------------------------------


def test_all_at_once_is_one_batch_of_every_target_with_the_digest_each_replaces() -> None:
    plan = domain.plan(spec(), targets(3), RELEASE)
    assert plan.batch_count == 1
    assert [t.batch for t in plan.tasks] == [0, 0, 0]
    assert plan.tasks[0].components == (DeployedComponent(name="api", digest=NEW, previous_digest=OLD),)


def test_no_targets_plans_nothing_and_says_so() -> None:
    plan = domain.plan(spec(strategy="rolling"), [], RELEASE)
    assert plan.tasks == () and plan.batch_count == 0
    assert "nothing to deploy" in plan.note


@pytest.mark.parametrize(
    ("batch_size", "total", "batches"),
    [
        ("1", 3, [0, 1, 2]),
        ("2", 5, [0, 0, 1, 1, 2]),
        ("50%", 4, [0, 0, 1, 1]),
        ("34%", 3, [0, 0, 1]),
        ("100%", 2, [0, 0]),
    ],
)
def test_rolling_batches_by_count_or_percentage(batch_size: str, total: int, batches: list[int]) -> None:
    plan = domain.plan(spec(strategy="rolling", batch_size=batch_size), targets(total), RELEASE)
    assert [t.batch for t in plan.tasks] == batches
    assert plan.batch_count == max(batches) + 1


def test_canary_steps_deploy_growing_shares_with_an_analysis_of_everything_deployed_so_far() -> None:
    plan = domain.plan(spec(strategy="canary", canary_steps=[10, 50, 100]), targets(10), RELEASE)
    by_batch: dict[int, list[tuple[str, TaskType]]] = {}
    for task in plan.tasks:
        by_batch.setdefault(task.batch, []).append((task.target_name, task.type))
    assert by_batch[0] == [("t00", TaskType.DEPLOY)]
    assert by_batch[1] == [("t00", TaskType.HEALTH_CHECK)]
    assert [n for n, _ in by_batch[2]] == ["t01", "t02", "t03", "t04"]
    assert {t for _, t in by_batch[3]} == {TaskType.HEALTH_CHECK} and len(by_batch[3]) == 5
    assert len(by_batch[4]) == 5 and plan.batch_count == 5


def test_canary_cuts_never_repeat_and_start_with_one_target() -> None:
    assert domain.canary_cuts([5, 10, 25, 50, 100], 4) == [1, 2, 4]
    assert domain.canary_cuts([100], 3) == [3]


def test_blue_green_deploys_the_idle_group_then_checks_it() -> None:
    blue = targets(2, color="blue")
    green = [domain.TargetInfo(uuid.UUID(int=100 + i), f"g{i}", {"color": "green"}, {}) for i in range(2)]
    first = domain.plan(spec(strategy="blue-green"), blue + green, RELEASE)
    assert {t.target_name for t in first.tasks} == {"t00", "t01"}
    assert first.switch_to == "blue" and first.switch_from is None
    second = domain.plan(spec(strategy="blue-green"), blue + green, RELEASE, active_group="blue")
    assert {(t.target_name, t.type, t.batch) for t in second.tasks} == {
        ("g0", TaskType.DEPLOY, 0),
        ("g1", TaskType.DEPLOY, 0),
        ("g0", TaskType.HEALTH_CHECK, 1),
        ("g1", TaskType.HEALTH_CHECK, 1),
    }
    assert second.switch_to == "green" and second.switch_from == "blue"
    empty = domain.plan(spec(strategy="blue-green"), blue, RELEASE, active_group="blue")
    assert empty.tasks == () and "green" in empty.note


def test_strategy_settings_are_checked() -> None:
    for bad in (
        {"canary_steps": [50, 10, 100]},
        {"canary_steps": [10, 50]},
        {"batch_size": "0"},
        {"batch_size": "150%"},
        {"groups": ["a", "a"]},
    ):
        with pytest.raises(ValidationError):
            StrategySpec.model_validate(bad)


# --- the job state machine ----------------------------------------------------------------------------------


def task(
    batch: int,
    status: TaskStatus = TaskStatus.PENDING,
    *,
    released: bool = False,
    type: TaskType = TaskType.DEPLOY,
    target: int | None = None,
    previous: str | None = OLD,
) -> domain.TaskState:
    return domain.TaskState(
        id=uuid.uuid4(),
        target_id=uuid.UUID(int=target if target is not None else batch + 1),
        type=type,
        batch=batch,
        status=status,
        released=released or status is not TaskStatus.PENDING,
        leased=status is not TaskStatus.PENDING,
        components=(DeployedComponent(name="api", digest=NEW, previous_digest=previous),),
    )


def job(
    status: JobStatus = JobStatus.RUNNING,
    *,
    batches: int = 1,
    current: int = 0,
    kind: JobKind = JobKind.DEPLOY,
    next_batch_at: datetime | None = None,
    **fields: object,
) -> domain.JobState:
    return domain.JobState(status, kind, spec(**fields), batches, current, next_batch_at)


def test_a_started_job_releases_its_first_batch_up_to_max_concurrent() -> None:
    tasks = [task(0, target=i) for i in range(5)]
    progress = domain.advance(job(max_concurrent=2), tasks, NOW)
    assert len(progress.release) == 2
    unlimited = domain.advance(job(), tasks, NOW)
    assert len(unlimited.release) == 5


def test_rolling_max_unavailable_bounds_a_batch_being_replaced_at_once() -> None:
    tasks = [task(0, target=i) for i in range(4)]
    progress = domain.advance(job(strategy="rolling", batch_size="4", max_unavailable=1), tasks, NOW)
    assert len(progress.release) == 1
    both = domain.advance(job(strategy="rolling", batch_size="4", max_unavailable=3, max_concurrent=2), tasks, NOW)
    assert len(both.release) == 2


def test_a_finished_task_frees_a_slot_for_the_next() -> None:
    tasks = [
        task(0, TaskStatus.SUCCEEDED, target=1),
        task(0, TaskStatus.RUNNING, target=2),
        task(0, target=3),
        task(0, target=4),
    ]
    progress = domain.advance(job(max_concurrent=2), tasks, NOW)
    assert progress.release == (tasks[2].id,)


def test_a_batch_done_starts_the_next_after_its_pause() -> None:
    tasks = [task(0, TaskStatus.SUCCEEDED), task(1)]
    waiting = domain.advance(job(batches=2, strategy="rolling", pause_s=30), tasks, NOW)
    assert waiting.next_batch_at == NOW + timedelta(seconds=30) and waiting.release == ()
    early = domain.advance(
        job(batches=2, strategy="rolling", pause_s=30, next_batch_at=waiting.next_batch_at), tasks, NOW
    )
    assert not early.changed
    later = NOW + timedelta(seconds=31)
    started = domain.advance(
        job(batches=2, strategy="rolling", pause_s=30, next_batch_at=waiting.next_batch_at), tasks, later
    )
    assert started.current_batch == 1 and started.release == (tasks[1].id,) and started.next_batch_at is None


def test_every_task_succeeded_ends_the_job_succeeded() -> None:
    progress = domain.advance(job(), [task(0, TaskStatus.SUCCEEDED), task(0, TaskStatus.SUCCEEDED, target=9)], NOW)
    assert progress.status is JobStatus.SUCCEEDED


def test_a_failed_batch_stops_the_rest_and_rolls_every_touched_target_back() -> None:
    done = task(0, TaskStatus.SUCCEEDED, target=1)
    failed = task(1, TaskStatus.FAILED, target=2)
    running = task(1, TaskStatus.RUNNING, target=3)
    later = task(2, target=4)
    first = domain.advance(job(batches=3, current=1, strategy="rolling"), [done, failed, running, later], NOW)
    assert first.status is JobStatus.RUNNING and first.cancel == (later.id,)  # waits for the running task
    cancelled = domain.TaskState(**{**later.__dict__, "status": TaskStatus.CANCELLED})
    finished = domain.TaskState(**{**running.__dict__, "status": TaskStatus.SUCCEEDED})
    second = domain.advance(job(batches=3, current=1, strategy="rolling"), [done, failed, finished, cancelled], NOW)
    assert second.status is JobStatus.ROLLING_BACK
    assert sorted(t.target_id.int for t in second.rollback) == [1, 2, 3]
    assert all(t.batch == 3 and t.type is TaskType.ROLLBACK for t in second.rollback)
    assert second.rollback[0].components == (DeployedComponent(name="api", digest=OLD, previous_digest=NEW),)


def test_rollback_tasks_ending_decide_rolled_back_or_failed() -> None:
    back = [
        task(3, TaskStatus.SUCCEEDED, type=TaskType.ROLLBACK, target=1),
        task(3, TaskStatus.SUCCEEDED, type=TaskType.ROLLBACK, target=2),
    ]
    rolled = domain.advance(job(JobStatus.ROLLING_BACK, batches=3), back, NOW)
    assert rolled.status is JobStatus.ROLLED_BACK
    back[1] = task(3, TaskStatus.FAILED, type=TaskType.ROLLBACK, target=2)
    failed = domain.advance(job(JobStatus.ROLLING_BACK, batches=3), back, NOW)
    assert failed.status is JobStatus.FAILED


def test_a_first_deployment_that_fails_fails_without_a_rollback() -> None:
    progress = domain.advance(job(), [task(0, TaskStatus.FAILED, previous=None)], NOW)
    assert progress.status is JobStatus.FAILED
    assert "no target had a previous digest" in (progress.reason or "")


def test_continue_runs_every_batch_and_fails_at_the_end() -> None:
    tasks = [task(0, TaskStatus.FAILED, target=1), task(1, target=2)]
    progress = domain.advance(job(batches=2, failure_behavior="continue"), tasks, NOW)
    assert progress.current_batch == 1 and progress.release == (tasks[1].id,)
    tasks[1] = task(1, TaskStatus.SUCCEEDED, target=2)
    end = domain.advance(job(batches=2, current=1, failure_behavior="continue"), tasks, NOW)
    assert end.status is JobStatus.FAILED and "1 of 2" in (end.reason or "")


def test_pause_holds_the_job() -> None:
    progress = domain.advance(job(batches=2, failure_behavior="pause"), [task(0, TaskStatus.TIMED_OUT), task(1)], NOW)
    assert progress.status is JobStatus.PAUSED
    assert not domain.advance(job(JobStatus.PAUSED, batches=2), [task(0, TaskStatus.TIMED_OUT), task(1)], NOW).changed


def test_resuming_a_paused_job_runs_the_failed_tasks_of_its_batch_again() -> None:
    failed, timed_out = task(1, TaskStatus.FAILED, target=1), task(1, TaskStatus.TIMED_OUT, target=2)
    done, earlier_failure = task(1, TaskStatus.SUCCEEDED, target=3), task(0, TaskStatus.FAILED, target=4)
    tasks = [earlier_failure, failed, timed_out, done, task(2, target=5)]
    assert set(domain.resume(job(JobStatus.PAUSED, batches=3, current=1), tasks)) == {failed.id, timed_out.id}
    for status in (JobStatus.RUNNING, JobStatus.PENDING, JobStatus.FAILED, JobStatus.CANCELLED):
        with pytest.raises(domain.JobNotPaused):
            domain.resume(job(status, batches=3, current=1), tasks)


def test_checks_report_every_target_instead_of_rolling_back() -> None:
    tasks = [
        task(0, TaskStatus.FAILED, type=TaskType.HEALTH_CHECK, target=1),
        task(0, TaskStatus.SUCCEEDED, type=TaskType.HEALTH_CHECK, target=2),
    ]
    progress = domain.advance(job(kind=JobKind.HEALTH_CHECK), tasks, NOW)
    assert progress.status is JobStatus.FAILED and progress.rollback == ()


def test_manual_rollback_selects_touched_targets_with_a_previous_digest() -> None:
    tasks = [
        task(0, TaskStatus.SUCCEEDED, target=1),
        task(0, TaskStatus.SUCCEEDED, target=2, previous=None),
        task(0, target=3),
    ]
    planned = domain.rollback_tasks(tasks, batch=0)
    assert [t.target_id.int for t in planned] == [1]
    assert domain.rollback_tasks(tasks, batch=0, targets=[uuid.UUID(int=2)]) == []


# --- targets, agents, stickers ------------------------------------------------------------------------------


def test_connections_name_only_what_an_agent_may_use() -> None:
    assert domain.check_connection(TargetType.DOCKER_HOST, {"docker_url": "unix:///var/run/docker.sock"})
    ok = {"docker_url": "tcp://10.0.0.5:2376", "project": "shop", "directory": "/srv/shop"}
    assert domain.check_connection(TargetType.COMPOSE_HOST, ok) == ok
    for target_type, bad in (
        (TargetType.DOCKER_HOST, {"project": "x"}),
        (TargetType.DOCKER_HOST, {"docker_url": "http://x"}),
        (TargetType.COMPOSE_HOST, {"directory": "../etc"}),
        (TargetType.COMPOSE_HOST, {"directory": "/srv/../etc"}),
        (TargetType.COMPOSE_HOST, {"project": "Shop!"}),
    ):
        with pytest.raises(domain.InvalidConnection):
            domain.check_connection(target_type, bad)


def test_heartbeats_decide_online_or_degraded_and_never_undo_a_revocation() -> None:
    assert domain.heartbeat_status(AgentStatus.OFFLINE, [{"name": "docker", "ok": True}]) is AgentStatus.ONLINE
    assert domain.heartbeat_status(AgentStatus.ONLINE, [{"name": "docker", "ok": False}]) is AgentStatus.DEGRADED
    assert domain.heartbeat_status(AgentStatus.REVOKED, []) is AgentStatus.REVOKED
    assert domain.offline_after(30) == timedelta(seconds=90)


def test_a_sticker_is_the_same_for_every_delivery_and_hashes_its_content() -> None:
    data = domain.StickerInput(
        release_id=uuid.UUID(int=1),
        release_name="r1",
        components=[{"name": "api", "digest": NEW, "semver": "1.0.0", "tag": "v1"}],
        job_id=uuid.UUID(int=2),
        promotion_id=None,
        environment_id=uuid.UUID(int=3),
        environment_name="dev",
        target_id=uuid.UUID(int=4),
        target_name="web-1",
        strategy=Strategy.ALL_AT_ONCE.value,
        started_at=NOW,
    )
    sticker = domain.build_sticker(data)
    assert sticker == domain.build_sticker(data)
    body = {k: v for k, v in sticker.items() if k != "content_hash"}
    assert sticker["content_hash"] == content_hash(body)
    assert sticker["release"]["components"] == [{"name": "api", "digest": NEW, "semver": "1.0.0", "tag": "v1"}]
    assert sticker["deployment"]["target_id"] == str(uuid.UUID(int=4))


STICKER_NAMES = (
    "web-1",
    "",
    "ünïcødé-名前",
    "emoji-\U0001f680-beyond-the-bmp",
    'quote-" backslash-\\ slash-/',
    "control-\x00\x1f\t\n\u2028",
    "stella-sticker-00000000000000000000000000000000",
    "a" * 300,
)
STICKER_COMPONENTS: tuple[list[dict[str, object]], ...] = (
    [{"name": "api", "digest": NEW, "semver": "1.0.0", "tag": "v1"}],
    [],
    [
        {"name": "ünï", "digest": OLD, "semver": None, "tag": "\U0001f680"},
        {"name": "db", "digest": NEW, "semver": "2.0.0-rc.1+build.5", "tag": None},
    ],
    # Not what a release holds, but what the canonical form must handle all the same: numbers (floats that
    # take RFC 8785's own serializer: 1e-07, 1.0), and nested objects whose keys sort beyond the BMP.
    [{"name": 7, "digest": 1.0, "semver": 1e-07, "tag": {"z": [1, 2.5, {"\U0001f680": 1e21, "é": -0.0}], "a": True}}],
)


@pytest.mark.parametrize("components", STICKER_COMPONENTS)
def test_a_job_sticker_template_hashes_byte_for_byte_as_the_canonical_function(
    components: list[dict[str, object]],
) -> None:
    data = domain.StickerInput(
        release_id=uuid.uuid4(),
        release_name='release \u00e9\U0001f680 "1"',
        components=components,
        job_id=uuid.uuid4(),
        promotion_id=uuid.uuid4() if components else None,
        environment_id=uuid.uuid4(),
        environment_name="prod-é",
        target_id=uuid.uuid4(),
        target_name="ignored",
        strategy=Strategy.ROLLING.value,
        started_at=NOW,
    )
    template = domain.StickerTemplate(data)
    for name in STICKER_NAMES:
        target_id = uuid.uuid4()
        expected = domain.build_sticker(dataclasses.replace(data, target_id=target_id, target_name=name))
        sticker = template.build(target_id, name)
        assert sticker == expected
        assert list(sticker) == list(expected)
        assert list(sticker["deployment"]) == list(expected["deployment"])
        assert sticker["content_hash"] == content_hash({k: v for k, v in sticker.items() if k != "content_hash"})
        assert json.dumps(sticker) == json.dumps(expected)


def test_a_job_sticker_template_refuses_a_name_the_canonical_function_refuses() -> None:
    data = domain.StickerInput(
        release_id=uuid.uuid4(),
        release_name="r1",
        components=[{"name": "api", "digest": NEW, "semver": "1.0.0", "tag": "v1"}],
        job_id=uuid.uuid4(),
        promotion_id=None,
        environment_id=uuid.uuid4(),
        environment_name="dev",
        target_id=uuid.uuid4(),
        target_name="web-1",
        strategy=Strategy.ALL_AT_ONCE.value,
        started_at=NOW,
    )
    with pytest.raises(CanonicalizationError):
        domain.build_sticker(dataclasses.replace(data, target_name="lone-\ud800"))
    with pytest.raises(CanonicalizationError):
        domain.StickerTemplate(data).build(uuid.uuid4(), "lone-\ud800")


def test_a_job_sticker_template_whose_marks_are_not_unique_builds_each_sticker_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("secrets.token_hex", lambda _: "0" * 32)  # both marks alike: no cut is sure
    data = domain.StickerInput(
        release_id=uuid.uuid4(),
        release_name="r1",
        components=[{"name": "api", "digest": NEW, "semver": "1.0.0", "tag": "v1"}],
        job_id=uuid.uuid4(),
        promotion_id=None,
        environment_id=uuid.uuid4(),
        environment_name="dev",
        target_id=uuid.uuid4(),
        target_name="web-1",
        strategy=Strategy.ALL_AT_ONCE.value,
        started_at=NOW,
    )
    target_id = uuid.uuid4()
    expected = domain.build_sticker(dataclasses.replace(data, target_id=target_id, target_name="web-2"))
    assert domain.StickerTemplate(data).build(target_id, "web-2") == expected
