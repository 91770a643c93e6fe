"""A registry behind bearer-token authentication and TLS from a private CA, read through a `registry` integration.

Everything is real but the token service: Debian's ``docker-registry`` serves HTTPS with a certificate from a
CA made here and accepts only tokens (``auth: token``) signed by a key whose certificate chains to that CA
(``rootcertbundle``). The token service is a small HTTPS server written here, as a registry's own would be: it
checks the user's basic credentials and issues an RS256 JWT for the scopes asked. The integration service's
connection test and the release service's sync go through the challenge, the token service and the registry,
trusting the CA only because the integration names it in ``ca_pem``.
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address, ip_network
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from nats.aio.client import Client

from stella.contracts import integration as i
from stella.contracts import release as r
from stella.integration.app import IntegrationApp
from stella.integration.app import create_app as integration_app
from stella.integration.keys import new_master_key
from stella.integration.settings import Settings as IntegrationSettings
from stella.kit.embedded import free_port
from stella.release.app import ReleaseApp
from stella.release.app import create_app as release_app
from stella.release.settings import Settings as ReleaseSettings
from stella.testing.registry import (
    LocalRegistry,
    TlsFiles,
    TokenAuth,
    find_registry_binary,
    push_image,
    request,
)
from stella.testing.services import TenantCaller, service_client

SERVICE = "stella-test-registry"
ISSUER = "stella-test-token-issuer"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass
class Pki:
    """A CA, the TLS certificate it issued for 127.0.0.1, and the token signer's key and certificate."""

    ca_pem: str
    files: TlsFiles
    signer_key: rsa.RSAPrivateKey
    signer_der: bytes

    def token(self, subject: str, access: list[dict[str, Any]]) -> str:
        """An RS256 JWT the registry accepts: issuer, audience, lifetime, access, and the signer's chain."""
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.signer_der).decode()]}
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self.signer_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    subject: str,
    public_key: Any,
    *,
    server: bool,
) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA made for the test, and what it issued; the system trusts none of it."""
    root = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Stella test CA"))
        .issuer_name(_name("Stella test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue(ca_key, ca_cert, "127.0.0.1", server_key.public_key(), server=True)
    signer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signer_cert = _issue(ca_key, ca_cert, "token signer", signer_key.public_key(), server=False)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM).decode()
    (root / "ca.pem").write_text(ca_pem)
    (root / "server.pem").write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    (root / "server.key").write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    files = TlsFiles(certificate=root / "server.pem", key=root / "server.key", ca=root / "ca.pem")
    return Pki(ca_pem, files, signer_key, signer_cert.public_bytes(serialization.Encoding.DER))


@dataclass
class TokenService:
    """The HTTPS token service: ``users`` may have tokens; ``issued`` counts the tokens given."""

    url: str
    users: dict[str, str]
    issued: int = 0


@pytest.fixture(scope="module")
def token_service(pki: Pki) -> Iterator[TokenService]:
    service = TokenService(url="", users={"ci": secrets.token_urlsafe(12)})

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            given = self.headers.get("Authorization", "")
            login = base64.b64decode(given[6:]).decode() if given.startswith("Basic ") else ""
            user, _, password = login.partition(":")
            if parts.path != "/token" or query.get("service") != [SERVICE]:
                self._answer(400, {"errors": [{"code": "UNSUPPORTED"}]})
                return
            if not user or service.users.get(user) != password:
                self._answer(401, {"errors": [{"code": "UNAUTHORIZED"}]})
                return
            access = []
            for scope in query.get("scope", []):
                kind, name, actions = scope.split(":", 2)
                access.append({"type": kind, "name": name, "actions": ["pull"] if "pull" in actions else []})
            service.issued += 1
            token = pki.token(user, access)
            self._answer(200, {"token": token, "access_token": token, "expires_in": 300})

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki.files.certificate), str(pki.files.key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    service.url = f"https://127.0.0.1:{server.server_address[1]}/token"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def token_registry(
    pki: Pki, token_service: TokenService, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalRegistry]:
    binary = find_registry_binary()
    if binary is None:
        pytest.skip("docker-registry is not installed")
    registry = LocalRegistry(
        tmp_path_factory.mktemp("token-registry"),
        binary=binary,
        tls=pki.files,
        token=TokenAuth(realm=token_service.url, service=SERVICE, issuer=ISSUER, root_cert_bundle=pki.files.ca),
    )
    with registry:
        yield registry


@pytest_asyncio.fixture
async def services(
    fresh_database: str, nats_url: str, stella_namespace: str, tmp_path: Path
) -> AsyncIterator[tuple[IntegrationApp, ReleaseApp]]:
    common: dict[str, Any] = {"database_url": fresh_database, "nats_url": nats_url, "nats_namespace": stella_namespace}
    key = tmp_path / "master.key"
    key.write_text(new_master_key())
    loopback = (ip_network("127.0.0.0/8"),)
    integration = integration_app(IntegrationSettings(**common, master_key_file=key, allowed_networks=loopback))
    release = release_app(ReleaseSettings(**common, registry_timeout_s=5, registry_allowed_networks=loopback))
    await integration.start()
    await release.start()
    try:
        yield integration, release
    finally:
        await release.stop()
        await integration.stop()


@pytest_asyncio.fixture
async def caller(services: tuple[IntegrationApp, ReleaseApp], nats: Client) -> AsyncIterator[TenantCaller]:
    async with service_client(nats, services[1].runtime.names) as client:
        yield TenantCaller(client, tenant_id=uuid.uuid4())


async def _integration(caller: TenantCaller, name: str, config: dict[str, Any], login: str) -> str:
    stored = await caller.query(i.STORE_SECRET, i.StoreSecret, name=f"{name}-login", value=login)
    assert stored.ok, stored.error
    created = await caller.command(
        i.CREATE_INTEGRATION,
        i.CreateIntegration,
        name=name,
        type_id="registry",
        config=config,
        credential_ref=f"secret:{name}-login",
    )
    assert created.ok, created.error
    return str(created.data["id"])


async def test_a_token_auth_registry_with_a_private_ca_is_synced_through_its_integration(
    caller: TenantCaller,
    pki: Pki,
    token_service: TokenService,
    token_registry: LocalRegistry,
    unique_id: str,
) -> None:
    registry = token_registry
    repo = f"{unique_id}/api"
    push_token = pki.token("pusher", [{"type": "repository", "name": repo, "actions": ["pull", "push"]}])
    digest = push_image(registry.url, repo, "2.0.0", bearer=push_token, context=registry.ssl_context())
    assert registry.url.startswith("https://")
    challenge = request("GET", f"{registry.url}/v2/", context=registry.ssl_context())
    assert challenge.status == 401
    assert challenge.headers["WWW-Authenticate"].startswith(f'Bearer realm="{token_service.url}"')
    user, password = next(iter(token_service.users.items()))

    trusted = await _integration(caller, "trusted", {"url": registry.url, "ca_pem": pki.ca_pem}, f"{user}:{password}")
    issued = token_service.issued
    tested = await caller.command(i.TEST_INTEGRATION, i.TestIntegration, integration_id=trusted)
    assert tested.data["health_status"] == "healthy", tested.data
    assert token_service.issued > issued, "the connection test did not go through the token service"

    component = await caller.command(
        r.CREATE_COMPONENT,
        r.CreateComponent,
        name="api",
        image_repository=f"{registry.address}/{repo}",
        registry_integration_id=trusted,
    )
    assert component.ok, component.error
    issued = token_service.issued
    sync = await caller.command(r.SYNC_VERSIONS, r.SyncVersions, component_id=component.data["id"])
    assert sync.ok, sync.error
    assert token_service.issued > issued, "the sync did not go through the token service"
    assert (sync.data["tags_seen"], sync.data["resolved"]) == (1, 1)
    versions = await caller.query(r.LIST_VERSIONS, r.ListVersions, component_id=component.data["id"])
    assert [(v["tag"], v["digest"]) for v in versions.data["items"]] == [("2.0.0", digest)]

    # Without the CA the registry's certificate is not trusted: the connection test and a sync say so.
    untrusted = await _integration(caller, "untrusted", {"url": registry.url}, f"{user}:{password}")
    refused = await caller.command(i.TEST_INTEGRATION, i.TestIntegration, integration_id=untrusted)
    assert refused.data["health_status"] == "unhealthy"
    assert f"TLS with registry {registry.address} failed" in refused.data["detail"], refused.data
    moved = await caller.command(
        r.UPDATE_COMPONENT, r.UpdateComponent, component_id=component.data["id"], registry_integration_id=untrusted
    )
    assert moved.ok, moved.error
    failed = await caller.command(r.SYNC_VERSIONS, r.SyncVersions, component_id=component.data["id"])
    assert (failed.error.code, failed.error.status) == ("REL_REGISTRY_UNAVAILABLE", 503), failed.error
    assert "certificate is not trusted" in failed.error.detail

    # A wrong password: the token service refuses it, and the connection test says which side refused.
    wrong = await _integration(caller, "wrong", {"url": registry.url, "ca_pem": pki.ca_pem}, f"{user}:x{password}")
    denied = await caller.command(i.TEST_INTEGRATION, i.TestIntegration, integration_id=wrong)
    assert (denied.data["health_status"], denied.data["detail"]) == (
        "unhealthy",
        f"the token service of {registry.address} refused the credentials",
    )
    for reply in (tested, refused, denied, sync, failed):
        assert password not in reply.model_dump_json()
