"""A signing key kept in an HSM (or any PKCS#11 token, such as SoftHSM), used through the :class:`Signer` interface.

The private key never leaves the token: the service finds it by token label and key label, asks the token to
sign, and reads only the public key (to name the key and publish it). Ed25519 keys (``CKK_EC_EDWARDS``,
``CKM_EDDSA``) and ECDSA P-256 keys (``CKK_EC``, ``CKM_ECDSA`` over a SHA-256 digest) are supported; signatures come out in the
same format as those of a key file (raw 64 bytes, DER ``(r, s)``), so verifiers cannot tell them apart.

The ``pkcs11`` module comes from the optional dependency ``stella-evidence[pkcs11]`` (``python-pkcs11``); it is
imported only when a token is configured. Keys are created and rotated with the token's own tools (for SoftHSM:
``softhsm2-util``, ``pkcs11-tool``): a new key under a new label, set in ``STELLA_EVIDENCE_PKCS11_KEY_LABEL``,
becomes the active key at the next start and the previous one is retired.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from stella.evidence.keys import BadSignatureError, KeyAlgorithm, PublicKey
from stella.kit.startup import ConfigurationError

_PROBE = b"stella evidence: does the token's private key match its public key?"


def _octet_string(value: bytes) -> bytes:
    """Unwrap a DER OCTET STRING (how tokens return ``CKA_EC_POINT``); raw bytes are returned as they are."""
    if len(value) >= 2 and value[0] == 0x04:
        length = value[1]
        if length < 0x80 and len(value) == 2 + length:
            return value[2:]
        if length == 0x81 and len(value) == 3 + value[2]:
            return value[3:]
    return value


class Pkcs11Signer:
    """A private key held by a PKCS#11 token; satisfies :class:`stella.evidence.keys.Signer`.

    One session serves every signature; a lock keeps two threads from using it at once.
    """

    def __init__(self, session: Any, private_key: Any, public_key: PublicKey, mechanism: Any) -> None:
        self._session = session
        self._private_key = private_key
        self._mechanism = mechanism
        self._lock = threading.Lock()
        self.public_key = public_key

    @property
    def key_ref(self) -> str:
        """Reference of the key (the one of its public key)."""
        return self.public_key.key_ref

    @property
    def algorithm(self) -> KeyAlgorithm:
        """The key's algorithm."""
        return self.public_key.algorithm

    def sign(self, data: bytes) -> bytes:
        """Have the token sign ``data``: raw 64 bytes for Ed25519, DER ``(r, s)`` over SHA-256 for ECDSA P-256."""
        message = hashlib.sha256(data).digest() if self.algorithm is KeyAlgorithm.ECDSA_P256 else data
        with self._lock:
            signature = bytes(self._private_key.sign(message, mechanism=self._mechanism))
        if self.algorithm is KeyAlgorithm.ECDSA_P256:
            half = len(signature) // 2  # PKCS#11 returns r || s
            return encode_dss_signature(int.from_bytes(signature[:half]), int.from_bytes(signature[half:]))
        return signature

    def close(self) -> None:
        """Close the token session."""
        with self._lock:
            self._session.close()

    def __repr__(self) -> str:
        return f"Pkcs11Signer(algorithm={self.algorithm.value!r}, key_ref={self.key_ref!r})"


@dataclass(frozen=True)
class Pkcs11KeySource:
    """Where the signing key lives when it is in a PKCS#11 token.

    Attributes:
        module: The token's PKCS#11 library (``STELLA_EVIDENCE_PKCS11_MODULE``, for SoftHSM
            ``/usr/lib/softhsm/libsofthsm2.so``).
        token_label: The token (``STELLA_EVIDENCE_PKCS11_TOKEN_LABEL``).
        key_label: The key pair's label (``STELLA_EVIDENCE_PKCS11_KEY_LABEL``).
        pin: The user PIN (``STELLA_EVIDENCE_PKCS11_PIN`` or ``..._PIN_FILE``).
    """

    module: Path
    token_label: str
    key_label: str
    pin: str | None = field(default=None, repr=False)

    @property
    def describe(self) -> str:
        """The key's location for messages (never the PIN)."""
        return f"pkcs11:token={self.token_label};object={self.key_label} ({self.module})"

    def load(self) -> Pkcs11Signer:
        """Open a session on the token and find the key pair.

        Raises:
            ConfigurationError: When the library, token or key is missing, the PIN is refused, the key type is
                not supported, or the private key does not match the public key.
        """
        try:
            import pkcs11  # the optional dependency stella-evidence[pkcs11]
        except ImportError:
            raise ConfigurationError(
                "STELLA_EVIDENCE_PKCS11_MODULE is set but python-pkcs11 is not installed: "
                "install stella-evidence[pkcs11]"
            ) from None
        from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

        where = self.describe
        try:
            lib = pkcs11.lib(str(self.module))
        except (RuntimeError, OSError, pkcs11.PKCS11Error) as exc:
            raise ConfigurationError(f"cannot load the PKCS#11 library {self.module}: {exc}") from None
        try:
            token = lib.get_token(token_label=self.token_label)
        except (pkcs11.NoSuchToken, pkcs11.MultipleTokensReturned) as exc:
            raise ConfigurationError(
                f"no single PKCS#11 token labelled {self.token_label!r}: {type(exc).__name__}"
            ) from None
        try:
            try:
                session = token.open(user_pin=self.pin)
            except pkcs11.UserAlreadyLoggedIn:
                # The login is per application and token: another session of this process (the previous key
                # during a rotation) logged in already.
                session = token.open()
        except pkcs11.PKCS11Error as exc:
            raise ConfigurationError(
                f"the PKCS#11 token {self.token_label!r} refused the session (STELLA_EVIDENCE_PKCS11_PIN or "
                f"STELLA_EVIDENCE_PKCS11_PIN_FILE): {type(exc).__name__}"
            ) from None
        try:
            # Whole searches (an abandoned one outlives the session and fails when collected).
            found = {
                kind: list(session.get_objects({Attribute.CLASS: kind, Attribute.LABEL: self.key_label}))
                for kind in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY)
            }
            if any(len(objects) != 1 for objects in found.values()):
                counts = ", ".join(f"{len(objects)} {kind.name.lower()}" for kind, objects in found.items())
                raise ConfigurationError(f"no usable key pair at {where}: the token holds {counts} with that label")
            private, public = found[ObjectClass.PRIVATE_KEY][0], found[ObjectClass.PUBLIC_KEY][0]
            key_type = private[Attribute.KEY_TYPE]
            point = _octet_string(bytes(public[Attribute.EC_POINT]))
            if key_type == KeyType.EC_EDWARDS:
                public_key = PublicKey.from_key(ed25519.Ed25519PublicKey.from_public_bytes(point))
                mechanism = Mechanism.EDDSA
            elif key_type == KeyType.EC:
                public_key = PublicKey.from_key(ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point))
                mechanism = Mechanism.ECDSA  # over a SHA-256 digest made here: every token offers plain ECDSA
            else:
                raise ConfigurationError(f"{where} is a {key_type} key; use Ed25519 or ECDSA P-256")
            signer = Pkcs11Signer(session, private, public_key, mechanism)
            public_key.verify(signer.sign(_PROBE), _PROBE)
        except ConfigurationError:
            session.close()
            raise
        except BadSignatureError:
            session.close()
            raise ConfigurationError(f"the private and public keys labelled {where} do not match") from None
        except (pkcs11.PKCS11Error, ValueError) as exc:
            session.close()
            raise ConfigurationError(
                f"no usable Ed25519 or ECDSA P-256 key pair at {where}: {type(exc).__name__} {exc}"
            ) from None
        return signer

    def load_or_create(self) -> Pkcs11Signer:
        """Keys in a token are created with the token's tools, never by the service: the same as :meth:`load`."""
        return self.load()

    def replace(self) -> Pkcs11Signer:
        """Rotation of a token key is the operator's: this always refuses.

        Raises:
            ConfigurationError: Always, saying how to rotate.
        """
        raise ConfigurationError(
            "the evidence signing key is in a PKCS#11 token: create a new key pair there under a new label, "
            "set STELLA_EVIDENCE_PKCS11_KEY_LABEL to it and restart; the new key becomes active and the old one "
            "is retired"
        )
