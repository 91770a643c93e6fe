"""The evidence service with its signing key in a PKCS#11 token (SoftHSM): packets, checkpoint and key log are
signed by the token, and the export verifies offline with the published keys."""

from __future__ import annotations

from pathlib import Path

import pytest_asyncio

from stella.evidence.app import MIGRATIONS, EvidenceApp
from stella.evidence.hsm import Pkcs11KeySource, Pkcs11Signer
from stella.evidence.settings import Settings

from ..conftest import SoftHsmToken
from .conftest import Auditor


@pytest_asyncio.fixture
async def evidence_settings(
    make_database, nats_url: str, stella_namespace: str, tmp_path: Path, softhsm_token: SoftHsmToken
) -> Settings:
    dsn = await make_database([("evidence", MIGRATIONS)])
    return Settings(
        database_url=dsn,
        nats_url=nats_url,
        nats_namespace=stella_namespace,
        key_dir=tmp_path / "keys",  # not used: the key is in the token
        pkcs11_module=softhsm_token.module,
        pkcs11_token_label=softhsm_token.label,
        pkcs11_key_label="service",
        pkcs11_pin_file=softhsm_token.pin_file,
        max_deliver=20,
        redelivery_backoff_s=0.05,
        ack_wait_s=10,
        outbox_poll_s=0.2,
        dependency_timeout_s=0.5,
        db_pool_size=10,
    )


async def test_the_service_signs_with_the_token_key_and_the_export_verifies_offline(
    evidence_app: EvidenceApp, auditor: Auditor, evidence_settings: Settings
) -> None:
    assert isinstance(evidence_app.signer.key_file, Pkcs11KeySource)
    key = evidence_app.signer.key
    assert isinstance(key, Pkcs11Signer) and key.key_ref.startswith("ed25519:")
    assert not (evidence_settings.key_dir).exists()  # no key file was written

    packets = [await auditor.collect(i) for i in range(3)]
    assert {packet["signer_key_ref"] for packet in packets} == {key.key_ref}
    keys = await auditor.published_keys()
    assert (keys / f"{key.key_ref.replace(':', '_')}.pem").read_bytes() == key.public_key.to_pem()

    code, out = await auditor.verify_offline(await auditor.export())
    assert code == 0, out
