"""The agent's settings (flags over ``STELLA_AGENT_*`` over defaults) and a task log's limits."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from stella.agent.settings import load_settings
from stella.agent.tasklog import TaskLog
from stella.contracts.agent import (
    MAX_LOG_LINE_CHARS,
    MAX_LOG_LINES_PER_CHUNK,
    AgentTask,
    LogChunk,
    RegistryCredential,
    TargetSpec,
    TargetType,
    TaskType,
)


def test_flags_win_over_the_environment_which_wins_over_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STELLA_AGENT_GATEWAY_URL", "http://stella.example:8000/")
    monkeypatch.setenv("STELLA_AGENT_NAME", "from-env")
    monkeypatch.setenv("STELLA_AGENT_LABELS", "zone=eu-1,tier=web")
    monkeypatch.setenv("STELLA_AGENT_STATE_DIR", "/var/lib/stella-agent")
    monkeypatch.setenv("STELLA_AGENT_ALLOWED_DIRECTORIES", "/srv/a,/srv/b")
    monkeypatch.setenv("STELLA_AGENT_REGISTRATION_TOKEN", "stl_reg_from_the_environment")

    settings = load_settings(["--name", "from-flag", "--max-concurrent-tasks", "8"])
    assert settings.gateway_url == "http://stella.example:8000"
    assert settings.name == "from-flag"
    assert settings.labels == {"zone": "eu-1", "tier": "web"}
    assert settings.allowed_directories == [Path("/srv/a"), Path("/srv/b")]
    assert settings.max_concurrent_tasks == 8
    assert settings.credential_path == Path("/var/lib/stella-agent/credential.json")
    assert "stl_reg_from_the_environment" not in repr(settings)

    assert load_settings(["--label", "zone=us-2"]).labels == {"zone": "us-2"}


@pytest.mark.parametrize(
    "argv",
    [
        ["--gateway-url", "ftp://stella.example"],
        ["--gateway-url", "http://stella.example", "--name", "Not A Name"],
        ["--gateway-url", "http://stella.example", "--label", "novalue"],
        ["--gateway-url", "http://stella.example", "--max-concurrent-tasks", "0"],
    ],
)
def test_invalid_settings_are_refused(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STELLA_AGENT_GATEWAY_URL", raising=False)
    with pytest.raises((ValidationError, ValueError)):
        load_settings(argv)


def _task(password: str = "a-long-registry-secret") -> AgentTask:  # noqa: S107
    return AgentTask(
        task_id=uuid.uuid4(),
        idempotency_key="k",
        type=TaskType.INSPECT,
        target=TargetSpec(target_id=uuid.uuid4(), name="t", target_type=TargetType.DOCKER_HOST),
        credentials=[RegistryCredential(registry="localhost:5000", username="u", password=password)],
    )


async def test_a_task_log_is_chunked_from_seq_0_cut_bounded_and_redacted() -> None:
    log = TaskLog(_task(), secrets=["agent-credential-value"], max_lines=MAX_LOG_LINES_PER_CHUNK + 10)
    log("x" * (MAX_LOG_LINE_CHARS + 50))
    log("two\nlines with a-long-registry-secret and agent-credential-value\x07")
    for index in range(2 * MAX_LOG_LINES_PER_CHUNK):
        log(f"line {index}")
    sent: list[LogChunk] = []

    async def post(chunk: LogChunk) -> None:
        sent.append(chunk)

    await log.send(post, final=True)
    assert [chunk.seq for chunk in sent] == [0, 1]
    lines = [line for chunk in sent for line in chunk.lines]
    assert len(lines[0]) == MAX_LOG_LINE_CHARS
    assert lines[1:3] == ["two", "lines with *** and ***"]
    assert len(lines) == MAX_LOG_LINES_PER_CHUNK + 10 + 1
    assert lines[-1].startswith(f"... {2 * MAX_LOG_LINES_PER_CHUNK + 3 - MAX_LOG_LINES_PER_CHUNK - 10} more lines")


async def test_a_chunk_the_gateway_did_not_take_is_sent_again_with_its_seq() -> None:
    log = TaskLog(_task())
    log("first")
    attempts: list[int] = []

    async def failing(chunk: LogChunk) -> None:
        attempts.append(chunk.seq)
        raise ConnectionError

    with pytest.raises(ConnectionError):
        await log.send(failing)
    log("second")
    sent: list[LogChunk] = []

    async def post(chunk: LogChunk) -> None:
        sent.append(chunk)

    await log.send(post, final=True)
    assert attempts == [0]
    assert [(chunk.seq, chunk.lines) for chunk in sent] == [(0, ["first"]), (1, ["second"])]
