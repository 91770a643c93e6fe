"""Which Postgres and NATS a test session gets: configured, else container, else embedded."""

from __future__ import annotations

import pytest

from stella.kit.embedded import free_port
from stella.testing import servers
from stella.testing.servers import (
    ServerUnavailableError,
    nats_answers,
    postgres_answers,
    provide_nats,
    provide_postgres,
)


@pytest.fixture(autouse=True)
def no_server_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STELLA_DATABASE_URL", "STELLA_NATS_URL", "STELLA_TEST_SERVERS"):
        monkeypatch.delenv(name, raising=False)


def dead_url(scheme: str) -> str:
    return f"{scheme}://127.0.0.1:{free_port()}"


def test_a_configured_server_that_answers_is_used(
    monkeypatch: pytest.MonkeyPatch, postgres_admin_dsn: str, nats_url: str
) -> None:
    monkeypatch.setenv("STELLA_DATABASE_URL", postgres_admin_dsn)
    monkeypatch.setenv("STELLA_NATS_URL", nats_url)
    postgres, nats = provide_postgres(), provide_nats()
    assert (postgres.source, postgres.url) == ("configured", postgres_admin_dsn)
    assert (nats.source, nats.url) == ("configured", nats_url)
    postgres.release()
    nats.release()
    assert postgres_answers(postgres_admin_dsn)
    assert nats_answers(nats_url)


def test_an_explicit_url_that_does_not_answer_fails_instead_of_falling_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STELLA_DATABASE_URL", dead_url("postgresql") + "/postgres")
    monkeypatch.setenv("STELLA_NATS_URL", dead_url("nats"))
    with pytest.raises(ServerUnavailableError, match="STELLA_DATABASE_URL"):
        provide_postgres()
    with pytest.raises(ServerUnavailableError, match="STELLA_NATS_URL"):
        provide_nats()


def test_without_a_default_server_or_docker_the_embedded_servers_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "DEFAULT_DATABASE_URL", dead_url("postgresql") + "/postgres")
    monkeypatch.setattr(servers, "DEFAULT_NATS_URL", dead_url("nats"))
    monkeypatch.setattr(servers, "docker_answers", lambda: False)
    postgres = provide_postgres()
    try:
        assert postgres.source == "embedded"
        assert postgres_answers(postgres.url)
    finally:
        postgres.release()
    assert not postgres_answers(postgres.url, timeout=1)
    nats = provide_nats()
    try:
        assert nats.source == "embedded"
        assert nats_answers(nats.url)
    finally:
        nats.release()
    assert not nats_answers(nats.url, timeout=1)


def test_a_pinned_source_is_the_only_one_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STELLA_TEST_SERVERS", "container")
    monkeypatch.setattr(servers, "docker_answers", lambda: False)
    with pytest.raises(ServerUnavailableError, match="no Docker engine answers"):
        provide_nats()
    monkeypatch.setenv("STELLA_TEST_SERVERS", "somewhere")
    with pytest.raises(ServerUnavailableError, match="not one of"):
        provide_postgres()
