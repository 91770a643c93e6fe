"""Evidence routes: packets, verification, keys, and export bundles streamed from a real object store.

A stand-in answers the evidence subjects on the real NATS server; the export test stores a real bundle in a
JetStream object store bucket of the test's namespace, as the evidence service does.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import tarfile
import uuid
from collections.abc import AsyncIterator
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.js.errors import DigestMismatchError, NotFoundError

from stella.contracts import evidence as evid
from stella.contracts.envelope import ErrorDetail, Reply
from stella.contracts.streams import StreamSpec
from stella.gateway.exports import BundleReader
from stella.gateway.settings import Settings

from . import views
from .conftest import Gateway, StandIn, assert_problem

_BUCKET = StreamSpec(
    name="STELLA_EVIDENCE_EXPORTS", subjects=(), max_age_s=3600, duplicate_window_s=0, description="export bundles"
)


@pytest_asyncio.fixture
async def gateway_settings(gateway_settings: Settings) -> Settings:
    """Reads time out quickly here, exports (built before they are answered) get longer."""
    return gateway_settings.model_copy(update={"query_timeout_s": 0.5, "export_timeout_s": 10.0})


@pytest_asyncio.fixture
async def bucket(gateway: Gateway, nats: Client) -> AsyncIterator[str]:
    """The export bucket of the test's namespace, deleted afterwards."""
    name = gateway.names.stream(_BUCKET)
    js = nats.jetstream()
    await js.create_object_store(name)
    try:
        yield name
    finally:
        with suppress(NotFoundError):
            await js.delete_object_store(name)


def _bundle(packets: int) -> bytes:
    """A tar.gz shaped like an export bundle, big enough to travel in several object store chunks."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in [
            ("VERIFY.md", b"# Verify this bundle\n"),
            ("manifest.json", b'{"files": {}}'),
            # Random bytes do not compress: the bundle stays larger than one chunk (128 KiB).
            *((f"envelopes/{n:08d}.json", os.urandom(64 * 1024)) for n in range(1, packets + 1)),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _described(bucket: str, name: str, data: bytes, packets: int, **changes: Any) -> dict[str, Any]:
    """The evidence service's export reply for ``data`` stored as ``name``."""
    now = datetime.now(UTC)
    reply = {
        "bucket": bucket,
        "object": name,
        "filename": "evidence-acme-20260105T100000Z.tar.gz",
        "packets": packets,
        "first_sequence": 1,
        "last_sequence": packets,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "created_at": now.isoformat(),
        "expires_at": (now + timedelta(hours=1)).isoformat(),
    }
    reply.update(changes)
    return reply


async def test_list_read_and_verify_packets(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    viewer = await gateway.principal_token(tenant, "vic", ["viewer"])
    promotion_id = str(uuid.uuid4())
    packet = views.packet(promotion_id, 3)
    services.answer(evid.LIST_PACKETS, views.page([packet], "after-3"))
    listed = await gateway.call(
        "GET",
        f"/api/v1/evidence?packet_type=release_decision&promotion_id={promotion_id}&page_size=1&page_token=t",
        viewer.token,
    )
    assert listed.status_code == 200, listed.text
    assert listed.json() == {"items": [packet], "next_page_token": "after-3"}
    sent = services.last(evid.LIST_PACKETS).payload
    assert (sent["packet_type"], sent["promotion_id"], sent["page"]) == (
        "release_decision",
        promotion_id,
        {"page_size": 1, "page_token": "t"},
    )
    everything = await gateway.call("GET", "/api/v1/evidence", viewer.token)
    assert everything.status_code == 200
    sent = services.last(evid.LIST_PACKETS).payload
    assert (sent["packet_type"], sent["promotion_id"]) == (None, None)

    services.answer(evid.GET_PACKET, packet)
    read = await gateway.call("GET", f"/api/v1/evidence/{packet['id']}", viewer.token)
    assert (read.status_code, read.json()) == (200, packet)
    assert read.json()["envelope"]["payloadType"] == "application/vnd.in-toto+json"
    assert services.last(evid.GET_PACKET).payload["packet_id"] == packet["id"]

    services.answer(evid.VERIFY_PACKET, views.verification(packet["id"], valid=False))
    verified = await gateway.call("POST", f"/api/v1/evidence/{packet['id']}/verify", viewer.token)
    assert verified.status_code == 200, verified.text
    assert verified.json()["valid"] is False
    assert verified.json()["findings"] == ["signature does not verify with ed25519:k1"]
    assert services.last(evid.VERIFY_PACKET).payload["packet_id"] == packet["id"]

    services.answer(evid.GET_PACKET, error=ErrorDetail(code="RES_NOT_FOUND", status=404, title="Not found"))
    assert_problem(await gateway.call("GET", f"/api/v1/evidence/{uuid.uuid4()}", viewer.token), 404, "RES_NOT_FOUND")
    for path in ("/api/v1/evidence?packet_type=selfie", "/api/v1/evidence?promotion_id=p1"):
        assert_problem(await gateway.call("GET", path, viewer.token), 400, "VAL_INVALID_REQUEST")
    assert_problem(await gateway.call("GET", "/api/v1/evidence/x1", viewer.token), 400, "VAL_INVALID_ID")
    assert_problem(await gateway.call("POST", "/api/v1/evidence/x1/verify", viewer.token), 400, "VAL_INVALID_ID")


async def test_keys_and_export_are_not_taken_for_packet_ids(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    keys = [views.key("ed25519:k2"), views.key("ed25519:k1", active=False)]
    # The evidence service answers a list as every list: {items, next_page_token}.
    services.answer(evid.LIST_KEYS, views.page(keys))
    response = await gateway.call("GET", "/api/v1/evidence/keys", tenant.token)
    assert response.status_code == 200, response.text
    assert response.json() == {"items": keys}
    assert [r.subject for r in services.received] == [evid.LIST_KEYS]

    for unexpected in ({"not": "a list"}, keys, {"items": [{"key_ref": "ed25519:k3"}]}):
        services.answer(evid.LIST_KEYS, unexpected)
        assert_problem(await gateway.call("GET", "/api/v1/evidence/keys", tenant.token), 502, "SYS_BAD_GATEWAY")


async def test_export_streams_the_stored_bundle(gateway: Gateway, services: StandIn, nats: Client, bucket: str) -> None:
    tenant = await gateway.tenant()
    viewer = await gateway.principal_token(tenant, "vic", ["viewer"])
    data = _bundle(packets=4)
    assert len(data) > 2 * 128 * 1024
    name = f"{tenant.id}/{uuid.uuid4()}.tar.gz"
    await (await nats.jetstream().object_store(bucket)).put(name, data)

    async def build(_: dict[str, Any]) -> Reply:
        # Exports are built before they are answered: slower than any read may be.
        await asyncio.sleep(1.0)
        return Reply.success(_described(bucket, name, data, packets=4))

    services.on(evid.EXPORT_BUNDLE, build)
    response = await gateway.call(
        "GET", "/api/v1/evidence/export?from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00%2B01:00", viewer.token
    )
    assert response.status_code == 200, response.text
    assert response.content == data
    assert response.headers["content-type"] == "application/gzip"
    assert response.headers["content-disposition"] == 'attachment; filename="evidence-acme-20260105T100000Z.tar.gz"'
    assert response.headers["content-length"] == str(len(data))
    digest = hashlib.sha256(data)
    assert response.headers["etag"] == f'"sha256:{digest.hexdigest()}"'
    assert response.headers["digest"] == "sha-256=" + base64.b64encode(digest.digest()).decode()
    assert response.headers["repr-digest"] == "sha-256=:" + base64.b64encode(digest.digest()).decode() + ":"
    assert response.headers["x-evidence-packets"] == "4"
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as archive:
        assert "VERIFY.md" in archive.getnames()

    sent = services.last(evid.EXPORT_BUNDLE).payload
    assert sent["tenant_id"] == str(tenant.id)
    assert datetime.fromisoformat(sent["created_from"]) == datetime(2026, 1, 1, tzinfo=UTC)
    assert datetime.fromisoformat(sent["created_to"]) == datetime(2026, 1, 31, 23, tzinfo=UTC)

    # Without a range every packet is exported.
    assert (await gateway.call("GET", "/api/v1/evidence/export", viewer.token)).content == data
    sent = services.last(evid.EXPORT_BUNDLE).payload
    assert (sent["created_from"], sent["created_to"]) == (None, None)


async def test_an_empty_export_is_an_empty_bundle(
    gateway: Gateway, services: StandIn, nats: Client, bucket: str
) -> None:
    tenant = await gateway.tenant()
    data = _bundle(packets=0)
    name = f"{tenant.id}/{uuid.uuid4()}.tar.gz"
    await (await nats.jetstream().object_store(bucket)).put(name, data)
    services.answer(
        evid.EXPORT_BUNDLE, _described(bucket, name, data, packets=0, first_sequence=None, last_sequence=None)
    )
    response = await gateway.call("GET", "/api/v1/evidence/export", tenant.token)
    assert (response.status_code, response.content, response.headers["x-evidence-packets"]) == (200, data, "0")


async def test_an_export_that_is_not_stored_as_described_is_502(
    gateway: Gateway, services: StandIn, nats: Client, bucket: str
) -> None:
    tenant = await gateway.tenant()
    data = _bundle(packets=1)
    name = f"{tenant.id}/{uuid.uuid4()}.tar.gz"
    await (await nats.jetstream().object_store(bucket)).put(name, data)
    for reply in [
        _described(bucket, f"{tenant.id}/missing.tar.gz", data, 1),
        _described(f"{bucket}_OTHER", name, data, 1),
        _described(bucket, name, data, 1, size=len(data) + 1),
        _described(bucket, name, data, 1, sha256="0" * 64),
        _described(bucket, name, data, 1, filename='evil"; filename=x.sh'),
        {"bucket": bucket},
    ]:
        services.answer(evid.EXPORT_BUNDLE, reply)
        response = await gateway.call("GET", "/api/v1/evidence/export", tenant.token)
        assert_problem(response, 502, "SYS_BAD_GATEWAY")


async def test_a_corrupt_bundle_never_reaches_its_announced_length(gateway: Gateway, nats: Client, bucket: str) -> None:
    js = nats.jetstream()
    data = _bundle(packets=4)
    name = f"{uuid.uuid4()}.tar.gz"
    await (await js.object_store(bucket)).put(name, data)
    # The stored description of the object now claims other bytes than its chunks hold, as a damaged
    # store would; the evidence service's reply agrees with the description.
    forged = bytearray(data)
    forged[-1] ^= 0xFF
    meta_subject = f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"
    stored = (await js.get_last_msg(f"OBJ_{bucket}", meta_subject)).data
    assert stored is not None
    meta = json.loads(stored)
    meta["digest"] = "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(forged).digest()).decode()
    await js.publish(meta_subject, json.dumps(meta).encode(), headers={"Nats-Rollup": "sub"})
    bundle = evid.ExportBundleView.model_validate(_described(bucket, name, bytes(forged), packets=4))

    received = bytearray()

    async def download() -> None:
        async for chunk in await BundleReader(js).open(bundle):
            received.extend(chunk)

    with pytest.raises(DigestMismatchError):
        await download()
    assert 0 < len(received) < len(data)
    assert data.startswith(received)

    # An intact object streams whole.
    intact = evid.ExportBundleView.model_validate(_described(bucket, f"{name}.2", data, packets=4))
    await (await js.object_store(bucket)).put(intact.object, data)
    assert b"".join([chunk async for chunk in await BundleReader(js).open(intact)]) == data


async def test_export_ranges_are_checked(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    for query, loc in [("from=2026-01-01T00:00:00", "from"), ("to=yesterday", "to")]:
        body = assert_problem(
            await gateway.call("GET", f"/api/v1/evidence/export?{query}", tenant.token), 400, "VAL_INVALID_REQUEST"
        )
        assert body["errors"][0]["loc"] == ["query", loc], body
    assert services.received == []

    backwards = ErrorDetail(
        code="VAL_EXPORT_RANGE", status=400, title="Invalid range", detail="created_to must be after created_from"
    )
    services.answer(evid.EXPORT_BUNDLE, error=backwards)
    response = await gateway.call(
        "GET", "/api/v1/evidence/export?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", tenant.token
    )
    assert_problem(response, 400, "VAL_EXPORT_RANGE")
    too_large = ErrorDetail(code="VAL_EXPORT_TOO_LARGE", status=422, title="Too large", detail="shorter range")
    services.answer(evid.EXPORT_BUNDLE, error=too_large)
    assert_problem(await gateway.call("GET", "/api/v1/evidence/export", tenant.token), 422, "VAL_EXPORT_TOO_LARGE")


async def test_reads_time_out_sooner_than_exports(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()

    async def slow(_: dict[str, Any]) -> Reply:
        await asyncio.sleep(1.0)
        return Reply.success(views.page([views.key()]))

    services.on(evid.LIST_KEYS, slow)
    response = await gateway.call("GET", "/api/v1/evidence/keys", tenant.token)
    assert_problem(response, 503, "SYS_UNAVAILABLE")


async def test_a_principal_without_roles_reads_no_evidence(gateway: Gateway, services: StandIn) -> None:
    tenant = await gateway.tenant()
    nobody = await gateway.principal_token(tenant, "nobody", [])
    packet_id = uuid.uuid4()
    for method, path in [
        ("GET", "/api/v1/evidence"),
        ("GET", "/api/v1/evidence/keys"),
        ("GET", "/api/v1/evidence/export"),
        ("GET", f"/api/v1/evidence/{packet_id}"),
        ("POST", f"/api/v1/evidence/{packet_id}/verify"),
    ]:
        denied = assert_problem(await gateway.call(method, path, nobody.token), 403, "PERM_DENIED")
        assert denied["required_permission"] == "evidence:read"
    assert services.received == []


async def test_checkpoint_and_proofs_are_relayed_and_their_sizes_checked_at_the_door(
    gateway: Gateway, services: StandIn
) -> None:
    tenant = await gateway.tenant()
    viewer = await gateway.principal_token(tenant, "vic", ["viewer"])
    checkpoint = {
        "origin": f"stella.local/evidence/{tenant.id}",
        "tree_size": 3,
        "root_hash": base64.b64encode(b"\x01" * 32).decode(),
        "note": f"stella.local/evidence/{tenant.id}\n3\nAQ==\n\n\u2014 stella.local/evidence AAAA\n",
        "key_ref": "ed25519:k1",
        "created_at": "2026-03-02T10:00:00Z",
    }
    services.answer(evid.GET_CHECKPOINT, checkpoint)
    response = await gateway.call("GET", "/api/v1/evidence/checkpoint", viewer.token)
    assert response.status_code == 200, response.text
    assert response.json() == checkpoint

    packet_id = uuid.uuid4()
    proof = {
        "packet_id": str(packet_id),
        "sequence": 2,
        "leaf_index": 1,
        "leaf_hash": "AQ==",
        "tree_size": 3,
        "hashes": ["Ag==", "Aw=="],
        "checkpoint": checkpoint,
    }
    services.answer(evid.GET_INCLUSION_PROOF, proof)
    response = await gateway.call("GET", f"/api/v1/evidence/{packet_id}/proof?tree_size=3", viewer.token)
    assert response.status_code == 200, response.text
    assert response.json() == proof

    consistency = {
        "old_size": 2,
        "new_size": 3,
        "hashes": ["Ag=="],
        "old_checkpoint": None,
        "new_checkpoint": checkpoint,
    }
    services.answer(evid.GET_CONSISTENCY_PROOF, consistency)
    response = await gateway.call("GET", "/api/v1/evidence/consistency?old_size=2", viewer.token)
    assert response.status_code == 200, response.text
    assert response.json() == consistency
    received = [(r.subject, r.payload.get("old_size"), r.payload.get("tree_size")) for r in services.received]
    assert received == [
        (evid.GET_CHECKPOINT, None, None),
        (evid.GET_INCLUSION_PROOF, None, 3),
        (evid.GET_CONSISTENCY_PROOF, 2, None),
    ]

    for path in (
        "/api/v1/evidence/consistency",
        "/api/v1/evidence/consistency?old_size=0",
        "/api/v1/evidence/checkpoint?tree_size=-1",
        f"/api/v1/evidence/{packet_id}/proof?tree_size=x",
    ):
        assert (await gateway.call("GET", path, viewer.token)).status_code == 400, path
    assert len(services.received) == 3
