"""The service's private signing key: kept in a file, registered in the database, rotated.

The key file is the only copy of the private key. It is created (mode 0600) on first start when missing and
kept; rotation writes a new key over it atomically, so the retired private key is gone and can never sign
again, while its public key stays in the ``keys`` table and keeps verifying what it signed.

The database says which key is active. Each packet is signed in a transaction that first reads the active
key's reference: when another process rotated the key, this process reloads the key file, so every replica
switches to the new key with the rotation's commit and never signs with a retired one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import asyncpg

from stella.contracts.canonical import sha256_digest
from stella.evidence import keylog, repo
from stella.evidence.domain import SignerOutOfDate
from stella.evidence.keys import (
    KeyAlgorithm,
    KeyFormatError,
    PublicKey,
    Signer,
    SigningKey,
    generate_key,
    load_private_key,
    save_private_key,
)
from stella.kit.startup import ConfigurationError

log = logging.getLogger(__name__)


class KeySource(Protocol):
    """Where the signing key lives: a key file (:class:`KeyFile`) or a PKCS#11 token
    (:class:`stella.evidence.hsm.Pkcs11KeySource`)."""

    @property
    def describe(self) -> str:
        """The key's location, for messages."""
        ...

    def load(self) -> Signer:
        """The key's signer."""
        ...

    def load_or_create(self) -> Signer:
        """The key's signer, creating the key first when the source may and it does not exist."""
        ...

    def replace(self) -> Signer:
        """A new key in place of the current one (rotation)."""
        ...


class KeyRetired(ConfigurationError):
    """The key file holds a key that was retired; a retired key must never sign again."""


@dataclass(frozen=True)
class KeyFile:
    """Where the private signing key lives, and the algorithm of keys generated there.

    Attributes:
        path: The PEM file.
        algorithm: Algorithm of newly generated keys; an existing file is used whatever its algorithm.
        password: The passphrase of the file (``STELLA_EVIDENCE_KEY_PASSPHRASE`` or ``..._FILE``).
    """

    path: Path
    algorithm: KeyAlgorithm = KeyAlgorithm.ED25519
    password: bytes | None = field(default=None, repr=False)
    """Passphrase the PEM is encrypted with (PKCS#8 best available encryption); ``None`` writes it in clear."""

    def load_or_create(self) -> SigningKey:
        """Load the key, generating and saving one (mode 0600) when the file does not exist.

        Two processes starting at once end up with the same key: the file is created without replacing one
        another process may have written in the meantime.

        Raises:
            stella.evidence.keys.KeyFormatError: When the file holds no usable private key.
        """
        if self.path.exists():
            return self.load()
        self._prepare_directory()
        key = generate_key(self.algorithm)
        staged = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.new")
        save_private_key(key, staged, password=self.password)
        try:
            os.link(staged, self.path)  # atomic, and fails rather than replace an existing file
        except FileExistsError:
            return self.load()
        finally:
            staged.unlink(missing_ok=True)
        log.info("generated a new evidence signing key", extra={"key_ref": key.key_ref, "path": str(self.path)})
        return key

    def replace(self) -> SigningKey:
        """Generate a new key and write it over the file atomically; the old private key is destroyed."""
        self._prepare_directory()
        key = generate_key(self.algorithm)
        save_private_key(key, self.path, password=self.password, overwrite=True)
        return key

    @property
    def describe(self) -> str:
        """The key file's path, for messages."""
        return str(self.path)

    def _prepare_directory(self) -> None:
        parent = self.path.parent
        if not parent.exists():
            parent.mkdir(parents=True, mode=0o700)

    def load(self) -> SigningKey:
        """Load the key from the file (warning when other users may read it).

        Raises:
            OSError: When the file cannot be read.
            stella.evidence.keys.KeyFormatError: When it holds no usable private key.
        """
        mode = self.path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning(
                "the evidence signing key file is readable by other users; restrict it to mode 0600",
                extra={"path": str(self.path), "mode": oct(stat.S_IMODE(mode))},
            )
        if self.password is None:
            try:
                return load_private_key(self.path)
            except KeyFormatError as exc:
                if "not given" not in str(exc):
                    raise
                raise KeyFormatError(
                    "the key is encrypted and no passphrase is set "
                    "(STELLA_EVIDENCE_KEY_PASSPHRASE or STELLA_EVIDENCE_KEY_PASSPHRASE_FILE)"
                ) from None
        try:
            return load_private_key(self.path, password=self.password)
        except KeyFormatError as exc:
            if "not encrypted" not in str(exc):
                # Only the fact, never the passphrase or the decryption internals.
                raise KeyFormatError(
                    "the passphrase (STELLA_EVIDENCE_KEY_PASSPHRASE or STELLA_EVIDENCE_KEY_PASSPHRASE_FILE) "
                    "does not decrypt the key"
                ) from None
        # A key written before a passphrase was configured: encrypt it now, atomically (a crash leaves the old
        # file or the encrypted one, never a half-written key).
        key = load_private_key(self.path)
        try:
            save_private_key(key, self.path, password=self.password, overwrite=True)
        except OSError as exc:
            log.warning(
                "the evidence signing key file is not encrypted although a passphrase is set, and cannot be "
                "rewritten encrypted; encrypt it or make its directory writable",
                extra={"path": str(self.path), "reason": str(exc)},
            )
            return key
        log.info(
            "encrypted the evidence signing key file with the configured passphrase", extra={"path": str(self.path)}
        )
        return key


async def register_key(conn: asyncpg.Connection, key: Signer, now: datetime) -> str | None:
    """Make ``key`` the database's active key unless it already is, in the open transaction.

    A key file holding a key the database does not know yet (first start, a rotation whose database step
    did not happen, a key an operator installed) becomes active and the previous key is retired.

    Returns:
        The reference of the key this retired, or ``None``.

    Raises:
        KeyRetired: When the key was retired before: it must not sign again.
    """
    await conn.execute(repo.LOCK_KEYS)
    known = await repo.get_key(conn, key.key_ref)
    if known is not None:
        if known.active:
            await extend_key_log(conn, key, None, now)  # keys that predate the log join it
            return None
        raise KeyRetired(
            f"the signing key {key.key_ref} in the key file was retired at {known.retired_at}; "
            "it must not sign again: run `python -m stella.evidence rotate-key` or install a new key file"
        )
    retired = await repo.activate_key(conn, key, await repo.activation_time(conn, now))
    await extend_key_log(conn, key, None, now)
    if retired is not None:
        log.warning("evidence signing key changed", extra={"key_ref": key.key_ref, "retired_key_ref": retired})
    return retired


async def rotate_key(conn: asyncpg.Connection, key_file: KeySource, now: datetime) -> tuple[str | None, Signer]:
    """Replace the signing key with a new one and retire the old one.

    The new key is written first and registered second, so a crash in between leaves a key file the next
    start registers (retiring the old key then); the old key never signs after the rotation commits.

    Args:
        conn: A connection to the evidence schema, outside any transaction.
        key_file: The key file to replace.
        now: The rotation time.

    Returns:
        The retired key's reference (``None`` when there was no key) and the new key.
    """
    async with conn.transaction():
        # Hold the key lock while the file changes, so two rotations cannot interleave (and packets being
        # signed with the old key commit first).
        await conn.execute(repo.LOCK_KEYS)
        previous: Signer | None = None
        with contextlib.suppress(OSError, KeyFormatError, ConfigurationError):
            previous = key_file.load()
        key = key_file.replace()
        retired = await repo.activate_key(conn, key, await repo.activation_time(conn, now))
        # The retiring key hands over: it signs the entry of its successor, which a forger holding only the
        # retired key cannot undo.
        await extend_key_log(conn, key, previous if previous is not None and previous.key_ref == retired else None, now)
    return retired, key


async def extend_key_log(conn: asyncpg.Connection, active: Signer, handover: Signer | None, now: datetime) -> None:
    """Append a signed key log entry for every key the log does not hold yet, in activation order.

    The active key signs every entry it appends (its own, and those of older keys written when the log was
    introduced); ``handover``, the key just retired, also signs the active key's entry.
    """
    entries = await repo.key_log(conn)
    logged = {ref for ref, _ in entries}
    previous_hash = keylog.parse_entry(entries[-1][1])[0].payload_hash if entries else None
    index = len(entries)
    for view in await repo.list_keys(conn):
        if view.key_ref in logged:
            continue
        public = PublicKey.from_pem(view.public_key_pem.encode())
        payload = keylog.entry_payload(index, public, view.created_at, previous_hash)
        signers: list[Signer] = [active]
        if view.key_ref == active.key_ref and handover is not None:
            signers.append(handover)
        await repo.append_key_log(conn, index, view.key_ref, keylog.sign_entry(payload, signers), now)
        previous_hash = sha256_digest(payload)
        index += 1


class ActiveSigner:
    """The key this process signs with, kept in step with the key the database marks active.

    Args:
        key_file: Where the private key lives: a key file, or a PKCS#11 token.
        create: Generate the key when the file does not exist; when False a missing file stops the start.
    """

    def __init__(self, key_file: KeySource, *, create: bool = True) -> None:
        self.key_file = key_file
        self.create = create
        self._key: Signer | None = None
        self.valid_from = datetime.min.replace(tzinfo=UTC)
        """When the key :meth:`current` last returned became valid: no packet it signs may be created earlier."""

    @property
    def key(self) -> Signer:
        """The key loaded at start (or since reloaded)."""
        if self._key is None:
            raise RuntimeError("the signing key is not loaded yet")
        return self._key

    async def start(self, pool: asyncpg.Pool, now: datetime) -> None:
        """Load (or create) the key file and register the key as the active one.

        Raises:
            ConfigurationError: when the key file is missing (and may not be created), unreadable, not a key,
                or holds a retired key.
        """
        path = self.key_file.describe
        try:
            self._key = self.key_file.load_or_create() if self.create else self.key_file.load()
        except FileNotFoundError as exc:
            raise ConfigurationError(
                f"no evidence signing key at {path}: mount the key volume (written by "
                "`python -m stella.evidence init-key`) or a secret holding the key there "
                "(STELLA_EVIDENCE_KEY_DIR / STELLA_EVIDENCE_KEY_FILE)"
            ) from exc
        except PermissionError as exc:
            raise ConfigurationError(f"the evidence signing key at {path} cannot be read or written: {exc}") from exc
        except KeyFormatError as exc:
            raise ConfigurationError(f"{path} holds no usable evidence signing key: {exc}") from exc
        async with pool.acquire() as conn, conn.transaction():
            await register_key(conn, self._key, now)

    def close(self) -> None:
        """Release what the key holds (a token session); a key file holds nothing."""
        close = getattr(self._key, "close", None)
        if callable(close):
            close()

    async def current(self, conn: asyncpg.Connection) -> Signer:
        """The key to sign with now, in the caller's transaction.

        Raises:
            SignerOutOfDate: When the active key is neither the loaded key nor the one in the key file
                (a fault: the message is retried).
        """
        await conn.execute(repo.LOCK_KEYS_SHARED)
        row = await repo.active_key(conn)
        active, self.valid_from = (None, self.valid_from) if row is None else row
        key = self.key
        if active == key.key_ref:
            return key
        with contextlib.suppress(OSError, ValueError, ConfigurationError):
            key = self.key_file.load()
        if active is None or key.key_ref != active:
            raise SignerOutOfDate(
                f"the active evidence key is {active}, but this process holds {self.key.key_ref} "
                f"and {self.key_file.describe} holds {key.key_ref}"
            )
        log.info("reloaded the rotated evidence signing key", extra={"key_ref": key.key_ref})
        self._key = key
        return key
