"""Where the agent writes on the host, and how."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from stella.agent.drivers.config import DriverConfig
from stella.agent.drivers.errors import TaskFailure
from stella.agent.drivers.files import (
    StickerUnreadable,
    read_sticker,
    render_sticker,
    target_directory,
    validate_sticker,
    write_atomic,
    write_sticker,
)
from stella.contracts.agent import STICKER_FILE, TargetSpec, TargetType

TARGET_ID = uuid.UUID(int=42)
STICKER = {
    "version": "1.0",
    "release": {"id": "r", "name": "n", "components": [{"name": "api", "digest": "sha256:" + "c" * 64}]},
    "deployment": {"target_id": str(TARGET_ID)},
}


def target(**connection: object) -> TargetSpec:
    return TargetSpec(target_id=TARGET_ID, name="t", target_type=TargetType.COMPOSE_HOST, connection=dict(connection))


def test_a_target_gets_its_own_directory_under_the_state_dir(tmp_path: Path) -> None:
    config = DriverConfig(state_dir=tmp_path / "state")
    directory = target_directory(config, target())
    assert directory == (tmp_path / "state" / "targets" / str(TARGET_ID)).resolve()
    assert directory.is_dir()


@pytest.mark.parametrize(
    "named",
    [
        "relative/dir",
        "/etc",
        "/",
        "{state}/targets",
        "{state}/targets-evil/x",
        "{state}/targets/../../x",
        "{state}/other",
    ],
)
def test_a_directory_outside_the_allowed_roots_is_refused(tmp_path: Path, named: str) -> None:
    config = DriverConfig(state_dir=tmp_path / "state")
    with pytest.raises(TaskFailure) as refused:
        target_directory(config, target(directory=named.format(state=tmp_path / "state")))
    assert refused.value.code == "AGT_INVALID_TASK"


def test_allowed_directories_and_symbolic_links(tmp_path: Path) -> None:
    projects = tmp_path / "srv" / "compose"
    projects.mkdir(parents=True)
    config = DriverConfig(state_dir=tmp_path / "state", allowed_directories=(projects,))
    assert target_directory(config, target(directory=str(projects / "shop"))) == (projects / "shop").resolve()
    (tmp_path / "state" / "targets").mkdir(parents=True)
    os.symlink(tmp_path, tmp_path / "state" / "targets" / "escape")
    with pytest.raises(TaskFailure):
        target_directory(config, target(directory=str(tmp_path / "state" / "targets" / "escape" / "x")))
    with pytest.raises(TaskFailure):
        target_directory(config, target(directory=123))


def test_write_atomic_writes_once_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert write_atomic(path, b"one") is True
    assert write_atomic(path, b"one") is False
    assert write_atomic(path, b"two") is True
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_stickers_render_the_same_way_and_round_trip(tmp_path: Path) -> None:
    shuffled = json.loads(json.dumps(STICKER))
    shuffled = dict(reversed(list(shuffled.items())))
    assert render_sticker(shuffled) == render_sticker(STICKER)
    artifact, changed = write_sticker(tmp_path, STICKER)
    assert changed
    found = read_sticker(tmp_path)
    assert found is not None
    assert found[0] == STICKER
    assert found[1] == artifact
    assert read_sticker(tmp_path / "nowhere") is None


@pytest.mark.parametrize("content", [b"{", b"[]", b"\xff\xfe", b"x" * 1_000_001])
def test_unreadable_stickers(tmp_path: Path, content: bytes) -> None:
    (tmp_path / STICKER_FILE).write_bytes(content)
    with pytest.raises(StickerUnreadable):
        read_sticker(tmp_path)


@pytest.mark.parametrize(
    "sticker",
    [
        {},
        {"release": {"components": "api"}},
        {"release": {"components": [{"name": "api"}]}},
        {"release": {"components": [{"name": "api", "digest": "sha256:short"}]}},
        {**STICKER, "deployment": {"target_id": str(uuid.UUID(int=1))}},
    ],
)
def test_stickers_stella_would_not_write_are_refused(sticker: dict[str, object]) -> None:
    with pytest.raises(TaskFailure) as refused:
        validate_sticker(sticker, target())
    assert refused.value.code == "AGT_INVALID_TASK"


def test_successful_results_are_remembered_per_key_and_the_oldest_forgotten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime

    from stella.agent.drivers import files
    from stella.contracts.agent import TaskResult

    def result(key: str) -> TaskResult:
        now = datetime.now(UTC)
        return TaskResult(
            task_id=uuid.uuid4(), idempotency_key=key, status="succeeded", started_at=now, finished_at=now
        )

    assert files.recall_result(tmp_path, "k0") is None
    monkeypatch.setattr(files, "MAX_JOURNAL_ENTRIES", 3)
    kept = [result(f"k{i}") for i in range(5)]
    for index, entry in enumerate(kept):
        files.remember_result(tmp_path, entry)
        path = files._journal_entry(tmp_path, entry.idempotency_key)
        os.utime(path, ns=(index * 10**9, index * 10**9))  # distinct ages, whatever the clock's resolution
    assert files.recall_result(tmp_path, "k4") == kept[4]
    assert [files.recall_result(tmp_path, f"k{i}") is not None for i in range(5)] == [False, False, True, True, True]
    files._journal_entry(tmp_path, "k4").write_text("{")  # a torn or edited entry is no result
    assert files.recall_result(tmp_path, "k4") is None
