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
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from stella.contracts import integration as i
from stella.contracts import release as r
from stella.kit.embedded import free_port
from stella.testing.pki import Pki, make_pki
from stella.testing.registry import (
    LocalRegistry,
    TokenAuth,
    find_registry_binary,
    push_image,
    request,
)
from stella.testing.services import TenantCaller

SERVICE = "stella-test-registry"
ISSUER = "stella-test-token-issuer"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _token(pki: Pki, subject: str, access: list[dict[str, Any]]) -> str:
    """An RS256 JWT the registry accepts: issuer, audience, lifetime, access, and the signer's chain."""
    now = int(time.time())
    header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(pki.signer_der).decode()]}
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
    signature = pki.signer_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url(signature)}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA made for the test, and what it issued; the system trusts none of it."""
    return make_pki(tmp_path_factory.mktemp("pki"))


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
            token = _token(pki, user, access)
            self._answer(200, {"token": token, "access_token": token, "expires_in": 300})

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    server.socket = pki.server_context().wrap_socket(server.socket, server_side=True)
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
    push_token = _token(pki, "pusher", [{"type": "repository", "name": repo, "actions": ["pull", "push"]}])
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
    assert refused.data["detail"] == (
        f"TLS with registry {registry.address} failed: its certificate is not trusted "
        "(add its CA to the integration's ca_pem)"
    )
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
