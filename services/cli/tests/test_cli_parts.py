"""Parts of the CLI that need no server: the saved login, the event stream's format, problem messages."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from stella.cli import config
from stella.cli.api import ApiError, _parse_sse
from stella.cli.app import app
from stella.cli.follow import Snapshot


def test_the_login_is_kept_for_the_user_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STELLA_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.delenv("STELLA_URL", raising=False)
    monkeypatch.delenv("STELLA_TOKEN", raising=False)
    with pytest.raises(config.NotLoggedIn):
        config.load()
    path = tmp_path / "cfg" / "config.json"
    path.parent.mkdir()
    path.write_text("{}")
    path.chmod(0o644)  # a file left readable by others is tightened when written
    config.save(config.Profile("http://stella.example:8080", "stl_abc"))
    assert path.stat().st_mode & 0o777 == 0o600
    assert config.load() == config.Profile("http://stella.example:8080", "stl_abc")
    monkeypatch.setenv("STELLA_TOKEN", "stl_ci")
    assert config.load().token == "stl_ci"
    assert config.load(url="http://other/").url == "http://other"
    assert config.forget() and not path.exists()


def test_server_sent_events_are_parsed_as_the_gateway_writes_them() -> None:
    lines = [
        ": stream open",
        "retry: 2000",
        "",
        "id: 7",
        "event: org.stellaops.release.ready",
        'data: {"id": "e1", "type": "org.stellaops.release.ready"}',
        "",
        ": keep-alive",
        "",
        "id: 9",
        'data: {"id": "e2", "type": "org.stellaops.promotion.approved"}',
        "",
    ]
    events = list(_parse_sse(iter(lines)))
    assert [(e.id, e.type, e.event["id"]) for e in events] == [
        ("7", "org.stellaops.release.ready", "e1"),
        ("9", "org.stellaops.promotion.approved", "e2"),
    ]


def test_problem_details_are_read_and_explained(tmp_path: Path) -> None:
    response = httpx.Response(
        422,
        json={
            "status": 422,
            "code": "PROM_ORDER_VIOLATION",
            "title": "Promotion order violated",
            "detail": "promote to staging first",
            "errors": [{"loc": ["body", "target_environment_id"], "msg": "not next"}],
            "trace_id": "t-1",
        },
    )
    error = ApiError.from_response(response)
    assert (error.status, error.code, error.trace_id) == (422, "PROM_ORDER_VIOLATION", "t-1")
    plain = ApiError.from_response(httpx.Response(502, text="<html>bad gateway</html>"))
    assert plain.code == "HTTP_502" and "bad gateway" in plain.detail


def test_not_logged_in_is_said_plainly(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["envs", "list"], env={"STELLA_CONFIG_DIR": str(tmp_path), "STELLA_URL": "", "STELLA_TOKEN": ""}
    )
    assert result.exit_code == 3
    assert "not logged in" in result.output


def test_offline_verification_of_something_that_is_not_a_bundle(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a bundle")
    result = CliRunner().invoke(app, ["-o", "json", "evidence", "verify", str(junk), "--trust-bundle-keys"])
    assert result.exit_code == 2
    assert "cannot read bundle" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("status", "run_status", "ended", "succeeded"),
    [
        ("deploying", "succeeded", False, False),  # the job's outcome has not reached the promotion yet
        ("deploying", "failed", False, False),
        ("pending_approval", "succeeded", False, False),
        ("approved", "running", False, False),
        ("approved", "succeeded", True, True),  # a workflow without a deploy step rests in approved
        ("approved", "failed", True, False),
        ("deployed", "running", True, True),
        ("failed", None, True, False),
        ("rejected", "succeeded", True, False),
    ],
)
def test_a_followed_promotion_ends_only_when_nothing_will_move_it(
    status: str, run_status: str | None, ended: bool, succeeded: bool
) -> None:
    shot = Snapshot({"id": "p", "status": status}, None if run_status is None else {"status": run_status})
    assert shot.ended() is ended
    assert shot.succeeded() is succeeded
