"""Envelope encryption of the secret store: AES-256-GCM values under per-tenant data keys, wrapped by a master key.

Each tenant has one random 256-bit data key, stored only wrapped (encrypted with AES-256-GCM under the master
key, the tenant id as associated data). Each secret value is encrypted under its tenant's data key with the
tenant id and the secret's name as associated data, so a ciphertext copied to another row or tenant does not
decrypt. The master key lives outside the database (a file or the environment); rotating it re-wraps the
data keys and leaves the values as they are.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass, field
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12


class MasterKeyError(ValueError):
    """The master key is missing or not 32 bytes of base64."""


class KeyUnavailable(RuntimeError):
    """A data key is wrapped by a master key this process does not have, or does not decrypt."""


def new_master_key() -> str:
    """A fresh master key as base64 text (what a master key file holds)."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


@dataclass(frozen=True)
class MasterKey:
    """A master key and its id (a fingerprint, stored beside each data key it wraps); ``repr`` hides the key."""

    key: bytes = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> MasterKey:
        """Read base64 text of 32 bytes.

        Raises:
            MasterKeyError: anything else.
        """
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise MasterKeyError("the master key is not base64") from None
        if len(raw) != KEY_BYTES:
            raise MasterKeyError(f"the master key must be {KEY_BYTES} bytes, not {len(raw)}")
        return cls(raw)

    @property
    def key_id(self) -> str:
        """Fingerprint of the key: which master key wrapped a data key."""
        return hashlib.sha256(b"stella-master-key:" + self.key).hexdigest()[:16]

    def wrap(self, tenant_id: UUID, data_key: bytes) -> bytes:
        """Encrypt a tenant's data key: nonce || ciphertext."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + AESGCM(self.key).encrypt(nonce, data_key, _dk_aad(tenant_id))

    def unwrap(self, tenant_id: UUID, wrapped: bytes) -> bytes:
        """Decrypt a tenant's data key.

        Raises:
            KeyUnavailable: the data key was not wrapped by this key for this tenant.
        """
        try:
            return AESGCM(self.key).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _dk_aad(tenant_id))
        except InvalidTag:
            raise KeyUnavailable(f"the data key of tenant {tenant_id} does not decrypt") from None


class Keyring:
    """The current master key and former ones (for rotation)."""

    def __init__(self, current: MasterKey, previous: tuple[MasterKey, ...] = ()) -> None:
        self.current = current
        self._by_id = {k.key_id: k for k in (*previous, current)}

    def get(self, key_id: str) -> MasterKey:
        """The master key with ``key_id``.

        Raises:
            KeyUnavailable: it is neither the current nor a listed former key.
        """
        key = self._by_id.get(key_id)
        if key is None:
            raise KeyUnavailable(f"master key {key_id} is not configured")
        return key


def new_data_key() -> bytes:
    """A random 256-bit data key."""
    return AESGCM.generate_key(bit_length=256)


def encrypt_value(data_key: bytes, tenant_id: UUID, name: str, value: str) -> tuple[bytes, bytes]:
    """Encrypt a secret value: ``(nonce, ciphertext)``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce, AESGCM(data_key).encrypt(nonce, value.encode(), _value_aad(tenant_id, name))


def decrypt_value(data_key: bytes, tenant_id: UUID, name: str, nonce: bytes, ciphertext: bytes) -> str:
    """Decrypt a secret value.

    Raises:
        KeyUnavailable: the ciphertext does not belong to this tenant and name, or was altered.
    """
    try:
        return AESGCM(data_key).decrypt(nonce, ciphertext, _value_aad(tenant_id, name)).decode()
    except InvalidTag:
        raise KeyUnavailable(f"secret {name!r} does not decrypt") from None


def _dk_aad(tenant_id: UUID) -> bytes:
    return b"stella-data-key:" + str(tenant_id).encode()


def _value_aad(tenant_id: UUID, name: str) -> bytes:
    return b"stella-secret:" + str(tenant_id).encode() + b":" + name.encode()
