"""The signing key file and the process's active signer (no database: its one query is answered in-test)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from stella.evidence import signing
from stella.evidence.domain import SignerOutOfDate
from stella.evidence.keys import KeyAlgorithm, KeyFormatError, generate_key, load_private_key, save_private_key
from stella.evidence.settings import KEY_FILE_NAME, Settings
from stella.evidence.signing import ActiveSigner, KeyFile
from stella.kit.startup import EX_CONFIG, ConfigurationError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_key_is_generated_once_private_to_its_owner_and_kept(tmp_path: Path) -> None:
    key_file = KeyFile(tmp_path / "keys" / "signing.pem", KeyAlgorithm.ECDSA_P256)
    first = key_file.load_or_create()
    assert first.algorithm is KeyAlgorithm.ECDSA_P256
    assert _mode(key_file.path) == 0o600 and _mode(key_file.path.parent) == 0o700
    assert key_file.load_or_create().key_ref == first.key_ref
    assert [p.name for p in key_file.path.parent.iterdir()] == ["signing.pem"]


def test_an_existing_key_is_used_whatever_algorithm_new_keys_get(tmp_path: Path) -> None:
    existing = generate_key(KeyAlgorithm.ECDSA_P256)
    save_private_key(existing, tmp_path / "k.pem")
    assert KeyFile(tmp_path / "k.pem", KeyAlgorithm.ED25519).load_or_create().key_ref == existing.key_ref


def test_two_processes_creating_the_key_at_once_end_up_with_one_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "k.pem"
    winner = generate_key()
    real_generate = signing.generate_key

    def generate_while_another_process_wins(algorithm):  # the other process saves its key meanwhile
        save_private_key(winner, path)
        return real_generate(algorithm)

    monkeypatch.setattr(signing, "generate_key", generate_while_another_process_wins)
    assert KeyFile(path).load_or_create().key_ref == winner.key_ref
    assert [p.name for p in tmp_path.iterdir()] == ["k.pem"]


def test_replacing_destroys_the_old_private_key(tmp_path: Path) -> None:
    key_file = KeyFile(tmp_path / "k.pem", KeyAlgorithm.ED25519)
    old = key_file.load_or_create()
    new = key_file.replace()
    assert new.key_ref != old.key_ref
    assert key_file.load().key_ref == new.key_ref and _mode(key_file.path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["k.pem"]


class _Database:
    """Answers what :meth:`ActiveSigner.current` asks: the shared key lock, the active key and its start."""

    def __init__(self, active: str | None) -> None:
        self.active = active
        self.locks = 0

    async def execute(self, sql: str, *args: object) -> None:
        assert "pg_advisory_xact_lock_shared" in sql
        self.locks += 1

    async def fetchrow(self, sql: str, *args: object) -> dict[str, object] | None:
        assert "WHERE active" in sql
        return None if self.active is None else {"key_ref": self.active, "created_at": datetime.now(UTC)}


async def test_the_signer_follows_a_rotation_made_by_another_process(tmp_path: Path) -> None:
    key_file = KeyFile(tmp_path / "k.pem")
    signer = ActiveSigner(key_file)
    signer._key = key_file.load_or_create()
    old = signer.key
    db = _Database(old.key_ref)
    assert (await signer.current(db)).key_ref == old.key_ref

    new = key_file.replace()
    # The file changed but the rotation has not committed: keep signing with the still-active key.
    assert (await signer.current(db)).key_ref == old.key_ref
    db.active = new.key_ref
    assert (await signer.current(db)).key_ref == new.key_ref
    assert signer.key.key_ref == new.key_ref

    db.active = generate_key().key_ref  # a key neither this process nor the file holds
    with pytest.raises(SignerOutOfDate, match=db.active):
        await signer.current(db)


def test_the_key_lives_in_the_key_directory_unless_a_file_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KEY_DIR", "KEY_FILE", "KEY_ALGORITHM"):
        monkeypatch.delenv(f"STELLA_EVIDENCE_{name}", raising=False)
    assert Settings().signing_key_path == Path(".stella/keys") / KEY_FILE_NAME
    monkeypatch.setenv("STELLA_EVIDENCE_KEY_DIR", "/srv/keys")
    monkeypatch.setenv("STELLA_EVIDENCE_KEY_ALGORITHM", "ecdsa-p256")
    settings = Settings()
    assert settings.signing_key_path == Path("/srv/keys") / KEY_FILE_NAME
    assert settings.key_algorithm is KeyAlgorithm.ECDSA_P256
    monkeypatch.setenv("STELLA_EVIDENCE_KEY_FILE", "/run/secrets/evidence.pem")
    assert Settings().signing_key_path == Path("/run/secrets/evidence.pem")


def test_a_passphrase_keeps_the_key_encrypted_at_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text("correct horse battery staple\n")
    monkeypatch.setenv("STELLA_EVIDENCE_KEY_DIR", str(tmp_path / "keys"))
    monkeypatch.setenv("STELLA_EVIDENCE_KEY_PASSPHRASE_FILE", str(secret))
    settings = Settings()
    assert settings.key_password == b"correct horse battery staple"
    key_file = settings.signing_key_file()
    key = key_file.load_or_create()
    text = key_file.path.read_text()
    assert "BEGIN ENCRYPTED PRIVATE KEY" in text and "BEGIN PRIVATE KEY" not in text
    assert stat.S_IMODE(key_file.path.stat().st_mode) == 0o600
    assert key_file.load().key_ref == key.key_ref
    with pytest.raises(KeyFormatError, match="STELLA_EVIDENCE_KEY_PASSPHRASE"):
        KeyFile(key_file.path).load()
    with pytest.raises(KeyFormatError):
        KeyFile(key_file.path, password=b"wrong").load()
    assert "ENCRYPTED" in key_file.path.read_text() and key_file.replace().key_ref != key.key_ref
    assert "BEGIN ENCRYPTED PRIVATE KEY" in key_file.path.read_text()


def test_a_clear_key_is_rewritten_encrypted_once_a_passphrase_is_set(tmp_path: Path) -> None:
    clear = tmp_path / "clear.pem"
    key = generate_key(KeyAlgorithm.ECDSA_P256)
    save_private_key(key, clear)
    assert "BEGIN PRIVATE KEY" in clear.read_text()
    assert KeyFile(clear, password=b"later").load().key_ref == key.key_ref
    text = clear.read_text()
    assert "BEGIN ENCRYPTED PRIVATE KEY" in text and "BEGIN PRIVATE KEY" not in text
    assert _mode(clear) == 0o600 and [p.name for p in tmp_path.iterdir()] == ["clear.pem"]
    assert load_private_key(clear, password=b"later").key_ref == key.key_ref
    with pytest.raises(KeyFormatError, match="no passphrase is set"):
        KeyFile(clear).load()


async def test_a_wrong_passphrase_stops_the_start_with_one_line_naming_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    save_private_key(generate_key(), path, password=b"the right one")
    signer = ActiveSigner(KeyFile(path, password=b"hunter2-wrong"), create=False)
    with pytest.raises(ConfigurationError) as caught:
        await signer.start(None, datetime.now(UTC))  # fails before the database is used
    message = str(caught.value)
    assert "does not decrypt the key" in message and "STELLA_EVIDENCE_KEY_PASSPHRASE" in message
    assert "\n" not in message and "hunter2" not in message and "the right one" not in message


def test_init_key_with_a_wrong_passphrase_exits_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    key_dir.mkdir()
    save_private_key(generate_key(), key_dir / KEY_FILE_NAME, password=b"the right one")
    env = {
        **os.environ,
        "STELLA_EVIDENCE_KEY_DIR": str(key_dir),
        "STELLA_EVIDENCE_KEY_PASSPHRASE": "hunter2-wrong",
    }
    env.pop("STELLA_EVIDENCE_KEY_PASSPHRASE_FILE", None)
    env.pop("STELLA_EVIDENCE_KEY_FILE", None)
    done = subprocess.run(
        [sys.executable, "-m", "stella.evidence", "init-key"], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == EX_CONFIG
    assert "Traceback" not in done.stderr and "hunter2" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "does not decrypt the key" in lines[0]

    env["STELLA_EVIDENCE_KEY_PASSPHRASE_FILE"] = str(tmp_path / "missing")
    done = subprocess.run(
        [sys.executable, "-m", "stella.evidence", "init-key"], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == EX_CONFIG and "Traceback" not in done.stderr
    assert "STELLA_EVIDENCE_KEY_PASSPHRASE_FILE" in done.stderr


def test_the_passphrase_may_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STELLA_EVIDENCE_KEY_PASSPHRASE_FILE", raising=False)
    monkeypatch.setenv("STELLA_EVIDENCE_KEY_PASSPHRASE", "s3cret")
    settings = Settings()
    assert settings.key_password == b"s3cret"
    assert "s3cret" not in repr(settings)
