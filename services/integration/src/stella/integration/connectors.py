"""Requests to the outside systems integrations name: a registry's ``/v2/`` and a notification webhook.

Every connection goes through the kit's egress guard (:mod:`stella.kit.egress`): only addresses the operator's
policy allows, literal addresses checked before aiohttp connects, redirects not followed, no proxy from the
environment. What a connection test reports says what went wrong (refused credentials, unreachable, a TLS
failure) and never carries a credential.
"""

from __future__ import annotations

import base64
import json
import re
import ssl
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import aiohttp

from stella.contracts.integration import HealthStatus
from stella.kit.addresses import AddressPolicy
from stella.kit.egress import AddressNotAllowed, check_literal_host, guarded_connector

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_PURPOSE = "an integration"


@dataclass(frozen=True)
class Probe:
    """A connection test's outcome."""

    status: HealthStatus
    detail: str
    http_status: int | None = None
    """The HTTP status the other side answered, when it answered."""


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


class Connectors:
    """One aiohttp session for every outbound call of the process."""

    def __init__(self, *, timeout_s: float = 10.0, addresses: AddressPolicy | None = None) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._addresses = addresses or AddressPolicy()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the guarded session."""
        self._session = aiohttp.ClientSession(
            connector=guarded_connector(self._addresses, purpose=_PURPOSE, limit=32),
            timeout=self._timeout,
            raise_for_status=False,
            trust_env=False,
        )

    async def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the connectors are not started")
        return self._session

    def _check(self, url: str) -> None:
        host = urlsplit(url).hostname or ""
        check_literal_host(host, self._addresses, purpose=_PURPOSE)

    async def _request(
        self, method: str, url: str, *, headers: dict[str, str], ca_pem: str | None = None, body: bytes | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        self._check(url)
        tls: ssl.SSLContext | bool = True
        if ca_pem:
            tls = ssl.create_default_context()
            tls.load_verify_locations(cadata=ca_pem)
        async with self.session.request(
            method, url, headers=headers, data=body, ssl=tls, allow_redirects=False
        ) as resp:
            return resp.status, dict(resp.headers), await resp.content.read(65536)

    async def probe_registry(
        self, url: str, *, ca_pem: str | None, username: str | None, password: str | None
    ) -> Probe:
        """GET ``<url>/v2/`` with the credential (basic, or a bearer token from the registry's token service)."""
        target = url.rstrip("/") + "/v2/"
        host = urlsplit(url).netloc
        try:
            headers = {"Authorization": _basic(username, password or "")} if username else {}
            status, resp_headers, _ = await self._request("GET", target, headers=headers, ca_pem=ca_pem)
            challenge = resp_headers.get("WWW-Authenticate", "")
            if status == 401 and challenge.lower().startswith("bearer"):
                params = dict(_CHALLENGE_PARAM.findall(challenge))
                realm = params.pop("realm", "")
                if not realm:
                    return Probe(HealthStatus.UNHEALTHY, f"registry {host} sent a bearer challenge without a realm")
                query = urlencode(params)
                token_status, _, token_body = await self._request(
                    "GET", realm + ("?" + query if query else ""), headers=headers, ca_pem=ca_pem
                )
                if token_status in (401, 403):
                    return Probe(HealthStatus.UNHEALTHY, f"the token service of {host} refused the credentials")
                if token_status >= 400:
                    return Probe(HealthStatus.UNHEALTHY, f"the token service of {host} answered {token_status}")
                try:
                    data = json.loads(token_body)
                    token = data.get("token") or data.get("access_token")
                except (ValueError, AttributeError):
                    token = None
                if not token:
                    return Probe(HealthStatus.UNHEALTHY, f"the token service of {host} returned no token")
                status, _, _ = await self._request(
                    "GET", target, headers={"Authorization": f"Bearer {token}"}, ca_pem=ca_pem
                )
        except AddressNotAllowed as exc:
            return Probe(
                HealthStatus.UNHEALTHY, f"{exc}; the operator allows networks in STELLA_INTEGRATION_ALLOWED_NETWORKS"
            )
        except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
            if isinstance(exc, aiohttp.ClientConnectorCertificateError):
                reason = "its certificate is not trusted (add its CA to the integration's ca_pem)"
            else:
                reason = type(exc).__name__
            return Probe(HealthStatus.UNHEALTHY, f"TLS with registry {host} failed: {reason}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            forbidden = _forbidden_cause(exc)
            if forbidden is not None:
                return Probe(HealthStatus.UNHEALTHY, str(forbidden))
            return Probe(HealthStatus.UNHEALTHY, f"registry {host} is unreachable: {type(exc).__name__}")
        if status in (401, 403):
            reason = "refused the credentials" if username else "needs credentials and the integration has none"
            return Probe(HealthStatus.UNHEALTHY, f"registry {host} {reason} (HTTP {status})")
        if status != 200:
            return Probe(HealthStatus.UNHEALTHY, f"registry {host} answered HTTP {status} to GET /v2/")
        return Probe(HealthStatus.HEALTHY, f"registry {host} answered GET /v2/ with HTTP 200")

    async def post_webhook(
        self, url: str, body: dict[str, object], *, token: str | None, idempotency_key: str | None = None
    ) -> Probe:
        """POST ``body`` as JSON to a webhook; healthy on a 2xx answer."""
        host = urlsplit(url).netloc
        headers = {"Content-Type": "application/json"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            status, _, _ = await self._request("POST", url, headers=headers, body=json.dumps(body).encode())
        except AddressNotAllowed as exc:
            return Probe(HealthStatus.UNHEALTHY, str(exc))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            forbidden = _forbidden_cause(exc)
            if forbidden is not None:
                return Probe(HealthStatus.UNHEALTHY, str(forbidden))
            return Probe(HealthStatus.UNHEALTHY, f"webhook {host} is unreachable: {type(exc).__name__}")
        if 200 <= status < 300:
            return Probe(HealthStatus.HEALTHY, f"webhook {host} accepted the message (HTTP {status})", status)
        return Probe(HealthStatus.UNHEALTHY, f"webhook {host} answered HTTP {status}", status)


def _forbidden_cause(exc: BaseException) -> AddressNotAllowed | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, AddressNotAllowed):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
