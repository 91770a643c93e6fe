"""Webhook secrets at rest: sealed with a key of the service, opened only to sign a delivery.

A secret is shown once, when its webhook is created; the database holds it sealed with AES-256-GCM under a
32-byte key kept in a file of its own (made on first start, mode 0600), bound to its tenant and webhook so a
sealed secret copied onto another row does not open. Losing the key means the webhooks' secrets must be
replaced (delete and re-create the webhooks); a database dump alone reveals none.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import tempfile
from pathlib import Path
from typing import Final
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from stella.contracts.events import SECRET_PREFIX

KEY_BYTES: Final[int] = 32
"""Length of the sealing key (AES-256)."""

SECRET_BYTES: Final[int] = 32
"""Random bytes in a webhook secret."""

_NONCE_BYTES: Final[int] = 12
_VERSION: Final[bytes] = b"\x01"


class SealingError(Exception):
    """A sealed secret cannot be opened (another key, or a value copied from another webhook)."""


def new_secret() -> str:
    """A new webhook secret in the Standard Webhooks form: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def load_or_create_key(path: Path) -> bytes:
    """Read the sealing key at ``path``, creating it (mode 0600, never overwritten) when missing.

    The key is written to a temporary file and linked into place, so replicas starting together share the one
    that lands first and none ever reads a half-written key.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as handle:  # mkstemp creates the file with mode 0600
                handle.write(secrets.token_bytes(KEY_BYTES))
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise SealingError(f"{path} must hold exactly {KEY_BYTES} bytes")
    return key


class Sealer:
    """Seals and opens webhook secrets with one key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SealingError(f"the sealing key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key)

    @staticmethod
    def _bound(tenant_id: UUID, webhook_id: UUID) -> bytes:
        return f"stella.webhook-secret:{tenant_id}:{webhook_id}".encode()

    def seal(self, secret: str, tenant_id: UUID, webhook_id: UUID) -> bytes:
        """The sealed form of ``secret`` for that webhook."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, secret.encode(), self._bound(tenant_id, webhook_id))

    def open(self, sealed: bytes, tenant_id: UUID, webhook_id: UUID) -> str:
        """The secret sealed in ``sealed`` for that webhook.

        Raises:
            SealingError: when it was sealed under another key or for another webhook.
        """
        if not sealed.startswith(_VERSION) or len(sealed) <= 1 + _NONCE_BYTES:
            raise SealingError("not a sealed webhook secret")
        nonce, ciphertext = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, ciphertext, self._bound(tenant_id, webhook_id)).decode()
        except InvalidTag:
            raise SealingError("the webhook secret cannot be opened with this service's key") from None
