"""HashiCorp Vault KV version 2 through ``hvac``: read one field of a secret, and the connection test.

``hvac`` speaks HTTP through ``requests``; the session given to it connects only to addresses the operator's
policy allows, checked on every connection after the name is resolved (the same rule as
:mod:`stella.kit.egress` for aiohttp, so a name that later resolves to an internal address reaches nothing),
ignores proxies from the environment and follows no redirect. ``hvac`` is synchronous: each call runs in a
worker thread. What an error says names the Vault host and what went wrong, never the token or a value.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from typing import Any, Final

import hvac
import hvac.exceptions
import requests
from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import NameResolutionError
from urllib3.util import connection as urllib3_connection

from stella.contracts.integration import HealthStatus
from stella.integration.connectors import Probe
from stella.kit.addresses import AddressPolicy
from stella.kit.egress import AddressNotAllowed, check_literal_host

_PURPOSE: Final[str] = "a vault request"
DEFAULT_MOUNT: Final[str] = "secret"
"""Mount path of the KV version 2 engine when the integration's config names none (Vault's dev default)."""


class VaultError(Exception):
    """Reading from a Vault failed; the message says why without a token or a secret value."""


@dataclass(frozen=True)
class VaultSettings:
    """A ``vault`` integration's config, as :class:`VaultClient` uses it."""

    address: str
    mount: str = DEFAULT_MOUNT
    namespace: str | None = None
    ca_pem: str | None = None

    @classmethod
    def of(cls, config: dict[str, Any]) -> VaultSettings:
        """From an integration's (already validated) config."""
        return cls(
            address=config["address"].rstrip("/"),
            mount=config.get("mount", DEFAULT_MOUNT),
            namespace=config.get("namespace"),
            ca_pem=config.get("ca_pem"),
        )

    @property
    def host(self) -> str:
        """``host:port`` of the address, for messages."""
        return self.address.split("://", 1)[-1].split("/", 1)[0]


def _guarded_pools(policy: AddressPolicy) -> dict[str, type[HTTPConnectionPool]]:
    """Connection pools whose connections go only to addresses ``policy`` allows."""

    def new_conn(self: HTTPConnection) -> socket.socket:
        host = self._dns_host
        try:
            infos = socket.getaddrinfo(host, self.port, 0, socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        allowed = [info for info in infos if policy.allows(ipaddress.ip_address(str(info[4][0]).split("%")[0]))]
        if not allowed:
            raise AddressNotAllowed(f"{host} resolves to no address {_PURPOSE} may reach")
        error: OSError | None = None
        for info in allowed:
            try:
                return urllib3_connection.create_connection(
                    (str(info[4][0]), self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except OSError as exc:
                error = exc
        assert error is not None
        raise error

    plain = type("GuardedHTTPConnection", (HTTPConnection,), {"_new_conn": new_conn})
    tls = type("GuardedHTTPSConnection", (HTTPSConnection,), {"_new_conn": new_conn})
    return {
        "http": type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": plain}),
        "https": type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": tls}),
    }


class _GuardedAdapter(HTTPAdapter):
    """A ``requests`` adapter whose pools connect only where the policy allows, trusting an extra CA."""

    def __init__(self, policy: AddressPolicy, ssl_context: ssl.SSLContext | None) -> None:
        self._pools = _guarded_pools(policy)
        self._ssl_context = ssl_context
        super().__init__(max_retries=0)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        if self._ssl_context is not None:
            pool_kwargs["ssl_context"] = self._ssl_context
        self.poolmanager = PoolManager(num_pools=connections, maxsize=maxsize, block=block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pools


def _session(policy: AddressPolicy, ca_pem: str | None) -> requests.Session:
    context = None
    if ca_pem:
        context = ssl.create_default_context()
        context.load_verify_locations(cadata=ca_pem)
    session = requests.Session()
    session.trust_env = False  # no proxy, no .netrc credentials from the environment
    adapter = _GuardedAdapter(policy, context)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first ``kind`` in an exception's causes, contexts, ``reason`` and arguments (urllib3 and requests
    wrap the error of a connection several times)."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, kind):
            return item
        todo.extend([item.__cause__, item.__context__, getattr(item, "reason", None), *item.args])
    return None


class VaultClient:
    """Reads KV version 2 secrets and tests Vault connections.

    Args:
        timeout_s: Seconds one HTTP request to a Vault may take.
        addresses: Which addresses a Vault may be at (loopback and private ones only when the operator allows).
    """

    def __init__(self, *, timeout_s: float = 10.0, addresses: AddressPolicy | None = None) -> None:
        self._timeout = timeout_s
        self._addresses = addresses or AddressPolicy()

    def _client(self, vault: VaultSettings, token: str) -> hvac.Client:
        hostname = vault.host.rsplit(":", 1)[0] if not vault.host.startswith("[") else vault.host.split("]")[0]
        check_literal_host(hostname, self._addresses, purpose=_PURPOSE)
        return hvac.Client(
            url=vault.address,
            token=token,
            namespace=vault.namespace,
            timeout=self._timeout,
            allow_redirects=False,
            session=_session(self._addresses, vault.ca_pem),
        )

    def _explain(self, vault: VaultSettings, exc: Exception, doing: str) -> str:
        host = vault.host
        if isinstance(exc, AddressNotAllowed) or _cause(exc, AddressNotAllowed) is not None:
            found = exc if isinstance(exc, AddressNotAllowed) else _cause(exc, AddressNotAllowed)
            return f"{found}; the operator allows networks in STELLA_INTEGRATION_ALLOWED_NETWORKS"
        if isinstance(exc, hvac.exceptions.InvalidPath):
            return f"vault {host} has nothing at {doing}"
        if isinstance(exc, (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized)):
            return f"vault {host} refused the token ({doing})"
        if isinstance(exc, hvac.exceptions.VaultDown):
            return f"vault {host} is sealed or in maintenance"
        if isinstance(exc, hvac.exceptions.VaultError):
            return f"vault {host} answered an error ({type(exc).__name__}) to {doing}"
        if isinstance(exc, requests.exceptions.SSLError) or _cause(exc, ssl.SSLError) is not None:
            return f"TLS with vault {host} failed (is its CA in the integration's ca_pem?)"
        if isinstance(exc, requests.exceptions.Timeout):
            return f"vault {host} did not answer in time"
        if isinstance(exc, (requests.exceptions.RequestException, OSError)):
            return f"vault {host} is unreachable: {type(exc).__name__}"
        return f"vault {host}: {type(exc).__name__}"

    def _read_sync(self, vault: VaultSettings, token: str, path: str, key: str) -> str:
        where = f"{vault.mount}/data/{path}"
        try:
            client = self._client(vault, token)
            try:
                answer = client.secrets.kv.v2.read_secret_version(
                    path=path, mount_point=vault.mount, raise_on_deleted_version=True
                )
            finally:
                client.adapter.close()
        except Exception as exc:  # every failure becomes a VaultError without the token
            raise VaultError(self._explain(vault, exc, where)) from None
        data = ((answer or {}).get("data") or {}).get("data") if isinstance(answer, dict) else None
        if not isinstance(data, dict):
            raise VaultError(f"vault {vault.host} sent no KV version 2 secret for {where}")
        value = data.get(key)
        if value is None:
            raise VaultError(f"the secret {where} in vault {vault.host} has no field {key!r}")
        if not isinstance(value, str):
            raise VaultError(f"the field {key!r} of {where} in vault {vault.host} is not text")
        return value

    async def read(self, config: dict[str, Any], token: str, path: str, key: str) -> str:
        """The field ``key`` of the current version of the KV v2 secret at ``path``.

        Raises:
            VaultError: not readable (missing, refused, unreachable, not text); the message holds no value.
        """
        return await asyncio.to_thread(self._read_sync, VaultSettings.of(config), token, path, key)

    def _probe_sync(self, vault: VaultSettings, token: str | None) -> Probe:
        host = vault.host
        try:
            client = self._client(vault, token or "")
            try:
                health = client.sys.read_health_status(method="GET")
                status = health if isinstance(health, dict) else {}
                if isinstance(health, requests.Response):
                    status = health.json() if health.content else {}
                if status.get("sealed") or not status.get("initialized", True):
                    return Probe(HealthStatus.UNHEALTHY, f"vault {host} is sealed or not initialized")
                if not token:
                    return Probe(HealthStatus.UNHEALTHY, f"vault {host} answers but the integration has no token")
                client.auth.token.lookup_self()
            finally:
                client.adapter.close()
        except Exception as exc:  # a connection test reports every failure as an outcome
            return Probe(HealthStatus.UNHEALTHY, self._explain(vault, exc, "a token lookup"))
        return Probe(HealthStatus.HEALTHY, f"vault {host} is unsealed and accepts the token")

    async def probe(self, config: dict[str, Any], token: str | None) -> Probe:
        """The connection test: the server's health (unsealed, initialized), then the token (``lookup-self``)."""
        return await asyncio.to_thread(self._probe_sync, VaultSettings.of(config), token)
