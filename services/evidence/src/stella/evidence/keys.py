"""Evidence signing keys: Ed25519 (default) and ECDSA P-256, their stable references, and a public key ring.

A key is named by its ``key_ref``: the algorithm, a colon, and the first 16 hex digits of the SHA-256 of the
public key's DER ``SubjectPublicKeyInfo`` (for example ``ed25519:3f9a0c12d4e5b6a7``). The reference is derived
from the key alone, so anybody holding the public key can recompute it; it is the DSSE ``keyid`` of every
signature and the ``signer_key_ref`` of every packet.

Signature formats are the ones standard tooling expects: Ed25519 signatures are the raw 64 bytes (RFC 8032);
ECDSA P-256 signatures are DER-encoded ``(r, s)`` over SHA-256 of the message (what ``openssl dgst -sha256``
and DSSE/cosign verifiers accept).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final, Protocol

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

KEY_REF_HEX_LENGTH: Final[int] = 16
"""Number of hex digits of the public key fingerprint kept in a ``key_ref`` (64 bits)."""

_KEY_REF_RE: Final[re.Pattern[str]] = re.compile(r"(ed25519|ecdsa-p256):[0-9a-f]{16}")


class KeyAlgorithm(StrEnum):
    """Signature algorithms evidence can be signed with."""

    ED25519 = "ed25519"
    """Ed25519 (RFC 8032), the default: small deterministic signatures, fast to verify."""
    ECDSA_P256 = "ecdsa-p256"
    """ECDSA over NIST P-256 with SHA-256, for estates whose policy requires NIST curves."""


class KeyFormatError(ValueError):
    """A key file or PEM block is unreadable, encrypted with the wrong password, or of an unsupported type."""


class SignatureVerificationError(Exception):
    """Base of the errors that mean "this signature does not prove what it claims"."""


class UnknownKeyError(SignatureVerificationError):
    """No trusted public key has the given reference.

    Attributes:
        key_ref: The reference that was looked up (``None`` when a signature named no key at all).
    """

    def __init__(self, key_ref: str | None, message: str | None = None) -> None:
        super().__init__(message or f"no trusted public key {key_ref}")
        self.key_ref = key_ref


class BadSignatureError(SignatureVerificationError):
    """A trusted key exists, but the signature does not verify with it.

    Attributes:
        key_ref: The key the signature was checked against.
    """

    def __init__(self, key_ref: str, message: str | None = None) -> None:
        super().__init__(message or f"signature does not verify with key {key_ref}")
        self.key_ref = key_ref


_PublicKeyObject = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
_PrivateKeyObject = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def _algorithm_of(key: object) -> KeyAlgorithm:
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return KeyAlgorithm.ED25519
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if isinstance(key.curve, ec.SECP256R1):
            return KeyAlgorithm.ECDSA_P256
        raise KeyFormatError(f"ECDSA curve {key.curve.name} is not supported; use P-256 (secp256r1)")
    raise KeyFormatError(f"{type(key).__name__} is not supported; use Ed25519 or ECDSA P-256")


def compute_key_ref(public_key: _PublicKeyObject) -> str:
    """Return the stable reference of a public key: ``<algorithm>:<first 16 hex of sha256(DER SPKI)>``.

    Raises:
        KeyFormatError: For key types other than Ed25519 and ECDSA P-256.
    """
    algorithm = _algorithm_of(public_key)
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"{algorithm.value}:{hashlib.sha256(der).hexdigest()[:KEY_REF_HEX_LENGTH]}"


def is_key_ref(value: object) -> bool:
    """Tell whether ``value`` has the shape of a key reference (algorithm, colon, 16 lowercase hex digits)."""
    return isinstance(value, str) and _KEY_REF_RE.fullmatch(value) is not None


@dataclass(frozen=True, eq=False)
class PublicKey:
    """A public key able to verify evidence signatures.

    Attributes:
        key: The ``cryptography`` public key object.
        algorithm: Its algorithm.
        key_ref: Its stable reference (see :func:`compute_key_ref`).
    """

    key: _PublicKeyObject
    algorithm: KeyAlgorithm
    key_ref: str

    @classmethod
    def from_key(cls, key: _PublicKeyObject) -> PublicKey:
        """Wrap a ``cryptography`` public key object.

        Raises:
            KeyFormatError: For key types other than Ed25519 and ECDSA P-256.
        """
        return cls(key=key, algorithm=_algorithm_of(key), key_ref=compute_key_ref(key))

    @classmethod
    def from_pem(cls, data: bytes) -> PublicKey:
        """Load a PEM ``PUBLIC KEY`` (SubjectPublicKeyInfo) block.

        Raises:
            KeyFormatError: When the data is not such a block or holds an unsupported key type.
        """
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyFormatError(f"not a PEM public key: {exc}") from exc
        if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
            raise KeyFormatError(f"{type(key).__name__} is not supported; use Ed25519 or ECDSA P-256")
        return cls.from_key(key)

    def to_pem(self) -> bytes:
        """Return the key as a PEM ``PUBLIC KEY`` block, the form ``openssl pkeyutl -pubin`` reads."""
        return self.key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def verify(self, signature: bytes, data: bytes) -> None:
        """Check a signature over ``data``.

        Raises:
            BadSignatureError: When the signature does not verify (including malformed DER for ECDSA).
        """
        try:
            if isinstance(self.key, ed25519.Ed25519PublicKey):
                self.key.verify(signature, data)
            else:
                self.key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise BadSignatureError(self.key_ref) from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other.key_ref == self.key_ref and other.to_pem() == self.to_pem()

    def __hash__(self) -> int:
        return hash(self.key_ref)


class Signer(Protocol):
    """Anything that signs bytes under a key reference: the service signs through this interface only.

    Implementations: :class:`SigningKey` (a key file, encrypted at rest with a passphrase),
    :class:`stella.evidence.hsm.Pkcs11Signer` (a key in an HSM or any PKCS#11 token). A cloud KMS is one more
    implementation: ``sign`` calls the KMS's asymmetric-sign operation and returns the signature in the
    algorithm's format (raw 64 bytes for Ed25519, DER ``(r, s)`` for ECDSA P-256).
    """

    @property
    def key_ref(self) -> str:
        """Reference of the key that produces the signatures."""
        ...

    @property
    def algorithm(self) -> KeyAlgorithm:
        """The key's signature algorithm."""
        ...

    @property
    def public_key(self) -> PublicKey:
        """The public key that verifies the signatures (published in the key list and the key log)."""
        ...

    def sign(self, data: bytes) -> bytes:
        """Return the signature of ``data`` in the format of the key's algorithm."""
        ...


@dataclass(frozen=True, eq=False)
class SigningKey:
    """A private evidence signing key.

    Attributes:
        key: The ``cryptography`` private key object.
        algorithm: Its algorithm.
        public_key: The matching public key.
    """

    key: _PrivateKeyObject
    algorithm: KeyAlgorithm
    public_key: PublicKey

    @classmethod
    def from_key(cls, key: _PrivateKeyObject) -> SigningKey:
        """Wrap a ``cryptography`` private key object.

        Raises:
            KeyFormatError: For key types other than Ed25519 and ECDSA P-256.
        """
        return cls(key=key, algorithm=_algorithm_of(key), public_key=PublicKey.from_key(key.public_key()))

    @classmethod
    def from_pem(cls, data: bytes, password: bytes | None = None) -> SigningKey:
        """Load a PEM private key (PKCS#8, or the traditional EC form), optionally password-protected.

        Raises:
            KeyFormatError: When the data is not a supported private key or the password is wrong or missing.
        """
        try:
            key = serialization.load_pem_private_key(data, password=password)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyFormatError(f"not a usable PEM private key: {exc}") from exc
        if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
            raise KeyFormatError(f"{type(key).__name__} is not supported; use Ed25519 or ECDSA P-256")
        return cls.from_key(key)

    @property
    def key_ref(self) -> str:
        """Reference of this key (the one of its public key)."""
        return self.public_key.key_ref

    def sign(self, data: bytes) -> bytes:
        """Sign ``data``: raw 64 bytes for Ed25519, DER ``(r, s)`` over SHA-256 for ECDSA P-256."""
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return self.key.sign(data)
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))

    def to_pem(self, password: bytes | None = None) -> bytes:
        """Return the key as PKCS#8 PEM, encrypted with ``password`` when one is given."""
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
        )
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)

    def __repr__(self) -> str:
        # Never let a private key reach a log line through repr().
        return f"SigningKey(algorithm={self.algorithm.value!r}, key_ref={self.key_ref!r})"


def generate_key(algorithm: KeyAlgorithm | str = KeyAlgorithm.ED25519) -> SigningKey:
    """Generate a new signing key.

    Args:
        algorithm: ``"ed25519"`` (default) or ``"ecdsa-p256"``.

    Raises:
        ValueError: For any other algorithm name.
    """
    algorithm = KeyAlgorithm(algorithm)
    if algorithm is KeyAlgorithm.ED25519:
        return SigningKey.from_key(ed25519.Ed25519PrivateKey.generate())
    return SigningKey.from_key(ec.generate_private_key(ec.SECP256R1()))


def save_private_key(
    key: SigningKey, path: str | os.PathLike[str], *, password: bytes | None = None, overwrite: bool = False
) -> None:
    """Write a private key as PEM to a file readable and writable by its owner only (mode 0600).

    The file is written to a temporary name in the same directory (created 0600 from the start, so the key is
    never readable by others even for an instant) and renamed into place, so a crash leaves either the old
    file or the new one.

    Args:
        key: The key to save.
        path: Destination file.
        password: Encrypt the PEM with this password (PKCS#8 best available encryption).
        overwrite: Replace an existing file. Off by default: overwriting a signing key loses it, and evidence
            signed with it can then only be verified through its published public key.

    Raises:
        FileExistsError: When ``path`` exists and ``overwrite`` is false.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; refusing to overwrite a signing key")
    # mkstemp creates the file with mode 0600.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.to_pem(password))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o600)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def load_private_key(path: str | os.PathLike[str], *, password: bytes | None = None) -> SigningKey:
    """Read a PEM private key file written by :func:`save_private_key` (or ``openssl genpkey``).

    Raises:
        KeyFormatError: When the file does not hold a supported private key or the password is wrong.
        OSError: When the file cannot be read.
    """
    return SigningKey.from_pem(Path(path).read_bytes(), password=password)


def load_public_key(path: str | os.PathLike[str]) -> PublicKey:
    """Read a PEM public key file.

    Raises:
        KeyFormatError: When the file does not hold a supported public key.
        OSError: When the file cannot be read.
    """
    return PublicKey.from_pem(Path(path).read_bytes())


class PublicKeyRing:
    """The public keys trusted to have signed evidence: the current key and every rotated one.

    Keys are only ever added: a rotated key must stay in the ring for as long as evidence signed with it is kept.
    """

    def __init__(self, keys: Iterable[PublicKey] = ()) -> None:
        self._keys: dict[str, PublicKey] = {}
        for key in keys:
            self.add(key)

    @classmethod
    def from_directory(cls, directory: str | os.PathLike[str]) -> PublicKeyRing:
        """Load every ``*.pem`` public key of a directory (not recursive).

        Raises:
            KeyFormatError: When a ``.pem`` file is not a supported public key (named in the message).
            OSError: When the directory cannot be read.
        """
        ring = cls()
        for pem in sorted(Path(directory).glob("*.pem")):
            try:
                ring.add(load_public_key(pem))
            except KeyFormatError as exc:
                raise KeyFormatError(f"{pem}: {exc}") from exc
        return ring

    def add(self, key: PublicKey) -> None:
        """Add a key; adding the same key twice is a no-op."""
        existing = self._keys.get(key.key_ref)
        if existing is not None and existing != key:
            # Two different keys with the same 64-bit fingerprint prefix: refuse rather than guess.
            raise ValueError(f"two different public keys share the reference {key.key_ref}")
        self._keys[key.key_ref] = key

    def get(self, key_ref: str) -> PublicKey:
        """Return the key with this reference.

        Raises:
            UnknownKeyError: When the ring has no such key.
        """
        try:
            return self._keys[key_ref]
        except KeyError:
            raise UnknownKeyError(key_ref) from None

    def verify(self, key_ref: str, signature: bytes, data: bytes) -> None:
        """Verify a signature made by the key ``key_ref``.

        Raises:
            UnknownKeyError: When the ring has no such key.
            BadSignatureError: When the signature does not verify with it.
        """
        self.get(key_ref).verify(signature, data)

    @property
    def key_refs(self) -> list[str]:
        """The references of every key, sorted."""
        return sorted(self._keys)

    def __contains__(self, key_ref: object) -> bool:
        return key_ref in self._keys

    def __iter__(self) -> Iterator[PublicKey]:
        return iter([self._keys[ref] for ref in sorted(self._keys)])

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"PublicKeyRing({self.key_refs!r})"
