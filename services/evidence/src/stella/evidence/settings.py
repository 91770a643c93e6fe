"""Settings of the evidence service (environment prefix ``STELLA_EVIDENCE_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from stella.evidence.hsm import Pkcs11KeySource
from stella.evidence.keys import KeyAlgorithm
from stella.evidence.signing import KeyFile, KeySource
from stella.kit.settings import ServiceSettings
from stella.kit.startup import ConfigurationError

KEY_FILE_NAME = "evidence-signing-key.pem"
"""Name of the private signing key inside :attr:`Settings.key_dir`."""


class Settings(ServiceSettings):
    """Evidence service settings."""

    model_config = SettingsConfigDict(env_prefix="STELLA_EVIDENCE_", extra="ignore", frozen=True)

    key_dir: Path = Path(".stella/keys")
    """Directory holding the private signing key (``evidence-signing-key.pem``), relative to the working
    directory unless absolute. The key is generated there (mode 0600) on first start and kept."""

    key_file: Path | None = None
    """An explicit private key file (PEM, Ed25519 or ECDSA P-256) used instead of the one in ``key_dir``;
    generated there on first start when it does not exist."""

    key_create: bool = True
    """Generate the key when the key file does not exist. False in containers: the key comes from a volume the
    bootstrap step wrote (``python -m stella.evidence init-key``) or from a mounted secret, and a missing key
    file stops the service with one line instead of signing with a key that vanishes with the container."""

    key_passphrase: SecretStr | None = None
    """Passphrase the private key file is encrypted with (PKCS#8, the best encryption ``cryptography`` offers);
    a key generated here is written encrypted with it. Prefer ``key_passphrase_file``: environment variables
    leak into process listings and crash reports more easily than a mounted secret."""

    key_passphrase_file: Path | None = None
    """A file holding the passphrase (its first line), such as a mounted secret; wins over ``key_passphrase``."""

    pkcs11_module: Path | None = None
    """The PKCS#11 library of an HSM holding the signing key (for SoftHSM ``/usr/lib/softhsm/libsofthsm2.so``).
    When set, the key is used from the token (``pkcs11_token_label``, ``pkcs11_key_label``) and the key file
    settings are not: the private key never leaves the token. Needs ``stella-evidence[pkcs11]``."""

    pkcs11_token_label: str | None = None
    """Label of the token holding the key."""

    pkcs11_key_label: str | None = None
    """Label (``CKA_LABEL``) of the key pair in the token: an Ed25519 or ECDSA P-256 private and public key."""

    pkcs11_pin: SecretStr | None = None
    """The token's user PIN. Prefer ``pkcs11_pin_file``."""

    pkcs11_pin_file: Path | None = None
    """A file holding the user PIN (its first line), such as a mounted secret; wins over ``pkcs11_pin``."""

    key_algorithm: KeyAlgorithm = KeyAlgorithm.ED25519
    """Algorithm of keys this service generates (first start, ``rotate-key``): ``ed25519`` or ``ecdsa-p256``.
    An existing key file is used whatever its algorithm."""

    max_deliver: int = Field(default=20, ge=1, le=100)
    """Failures of a command before it is dead-lettered. Higher than the kit's default: a step may arrive
    before the promotion it records is decided, and each redelivery waits a little longer than the one
    before. Services that do not answer are transient faults and spend nothing of it (see
    :mod:`stella.kit.faults`)."""

    append_batch_size: int = Field(default=256, ge=1, le=10_000)
    """Most packets appended in one transaction (group commit, :mod:`stella.evidence.appender`): the commands
    waiting to append when a transaction starts are appended together under one chain lock per tenant and one
    commit. 1 appends each command in a transaction of its own. The commands handled at once (and so the
    batches) are also bounded by ``max_in_flight``."""

    dependency_timeout_s: float = Field(default=5.0, gt=0, le=60)
    """Seconds a query to the promotion or approval service may take before it counts as unavailable."""

    export_max_age_s: float = Field(default=3600.0, ge=60, le=7 * 24 * 3600)
    """How long an exported bundle stays in the NATS object store for the gateway to fetch."""

    export_max_packets: int = Field(default=100_000, ge=1, le=10_000_000)
    """Most packets one export may hold (the bundle is built in memory)."""

    max_reply_bytes: int = Field(default=768 * 1024, ge=16 * 1024, le=64 * 1024 * 1024)
    """Budget of one list reply in JSON bytes; a page stops early rather than exceed NATS's message limit."""

    checkpoint_origin: str = Field(default="stella.local/evidence", pattern=r"^[\x21-\x7e]{1,200}$")
    """The installation's name in signed checkpoints: each tenant's tree is the log ``<origin>/<tenant id>`` and
    checkpoints are signed under the key name ``<origin>``. A schema-less URL, as C2SP signed notes recommend;
    it need not be reachable."""

    checkpoint_interval_s: float = Field(default=1.0, gt=0, le=60)
    """Seconds between two rounds of checkpoint signing: every tree that grew since its newest checkpoint gets
    a new one, so a checkpoint covers every packet within this time (an export signs one at once)."""

    tsa_url: str | None = Field(default=None, pattern=r"^https?://[^\s]{1,500}$")
    """An RFC 3161 time-stamping authority (``STELLA_EVIDENCE_TSA_URL``): every checkpoint's signed note is sent
    to it and its token kept with the checkpoint and put in export bundles (``checkpoint.tsr``), so the time a
    checkpoint existed at rests on the TSA's clock and key, not the service's. Unset: no timestamps."""

    tsa_timeout_s: float = Field(default=10.0, gt=0, le=120)
    """Seconds a request to the time-stamping authority may take; a checkpoint the TSA did not answer for in
    time is timestamped at the next export."""

    @property
    def key_password(self) -> bytes | None:
        """The passphrase of the key file, read from ``key_passphrase_file`` or ``key_passphrase``.

        Raises:
            OSError: When the passphrase file cannot be read.
        """
        if self.key_passphrase_file is not None:
            lines = self.key_passphrase_file.read_text(encoding="utf-8").splitlines()
            return lines[0].encode() if lines and lines[0] else None
        return self.key_passphrase.get_secret_value().encode() if self.key_passphrase else None

    def signing_key_file(self) -> KeyFile:
        """Where the private signing key lives, with its algorithm and passphrase.

        Raises:
            ConfigurationError: When the passphrase file cannot be read.
        """
        try:
            password = self.key_password
        except OSError as exc:
            raise ConfigurationError(
                f"the evidence key passphrase file {self.key_passphrase_file} "
                f"(STELLA_EVIDENCE_KEY_PASSPHRASE_FILE) cannot be read: {exc.strerror or exc}"
            ) from None
        return KeyFile(self.signing_key_path, self.key_algorithm, password)

    def key_source(self) -> KeySource:
        """Where the signing key lives: the PKCS#11 token when ``pkcs11_module`` is set, else the key file.

        Raises:
            ConfigurationError: When the token settings are incomplete or a passphrase or PIN file cannot be read.
        """
        if self.pkcs11_module is None:
            return self.signing_key_file()
        if not self.pkcs11_token_label or not self.pkcs11_key_label:
            raise ConfigurationError(
                "STELLA_EVIDENCE_PKCS11_MODULE is set: set STELLA_EVIDENCE_PKCS11_TOKEN_LABEL and "
                "STELLA_EVIDENCE_PKCS11_KEY_LABEL too"
            )
        pin: str | None = self.pkcs11_pin.get_secret_value() if self.pkcs11_pin else None
        if self.pkcs11_pin_file is not None:
            try:
                lines = self.pkcs11_pin_file.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ConfigurationError(
                    f"the PKCS#11 PIN file {self.pkcs11_pin_file} (STELLA_EVIDENCE_PKCS11_PIN_FILE) cannot be read: "
                    f"{exc.strerror or exc}"
                ) from None
            pin = lines[0] if lines and lines[0] else None
        return Pkcs11KeySource(self.pkcs11_module, self.pkcs11_token_label, self.pkcs11_key_label, pin)

    @property
    def signing_key_path(self) -> Path:
        """Where the private signing key lives: ``key_file`` when set, else ``key_dir/evidence-signing-key.pem``."""
        return self.key_file if self.key_file is not None else self.key_dir / KEY_FILE_NAME
