"""A small OCI distribution API client: list a repository's tags and resolve a tag to its manifest digest.

Anonymous, HTTP basic and bearer-token (``WWW-Authenticate: Bearer realm=...``) registries are supported,
over TLS trusting the system's CAs plus those a registry integration names. Credentials come from a registry
integration (see :mod:`stella.release.integrations`) or, deprecated, an allowed host credential reference
(see :mod:`stella.release.credentials`), and are never logged or stored.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import ssl
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp

from stella.kit.addresses import AddressPolicy
from stella.kit.egress import AddressNotAllowed, check_literal_host, guarded_connector
from stella.kit.errors import Unavailable, Unprocessable

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_PURPOSE = "a registry request"
MAX_REDIRECTS = 5
"""Redirects one registry request follows at most."""


class RegistryUnavailable(Unavailable):
    """The registry did not answer or answered with a server error; nothing was changed."""

    code = "REL_REGISTRY_UNAVAILABLE"
    title = "Registry unavailable"


class RegistryAddressForbidden(Unprocessable):
    """The registry (or a redirect or token realm it names) is at an address the operator does not allow."""

    code = "REL_REGISTRY_ADDRESS_FORBIDDEN"
    title = "Registry address not allowed"


class RegistryAuthFailed(Unprocessable):
    """The registry refused the configured credentials (or needs some and none are configured)."""

    code = "REL_REGISTRY_AUTH_FAILED"
    title = "Registry refused access"


class RepositoryNotFound(Unprocessable):
    """The registry has no such repository."""

    code = "REL_REPOSITORY_NOT_FOUND"
    title = "Repository not found in registry"


class TagNotFound(Unprocessable):
    """The registry has no such tag in the repository."""

    code = "REL_UNKNOWN_TAG"
    title = "Unknown tag"


@dataclass(frozen=True)
class Credentials:
    """Basic credentials for a registry; ``repr`` never shows the password."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=***)"


@dataclass(frozen=True)
class Access:
    """How one registry is read: its credentials (None: anonymous), PEM certificates trusted for its TLS besides
    the system's, and the ``scheme://host[:port]`` a registry integration names (None: the scheme follows from
    the repository's host and the insecure hosts)."""

    credentials: Credentials | None = None
    ca_pem: str | None = None
    base_url: str | None = None


@dataclass(frozen=True)
class ImageRef:
    """A repository split into its registry base URL and repository path."""

    base_url: str
    path: str
    host: str


def split_repository(repository: str, insecure_hosts: list[str]) -> ImageRef:
    """Split ``host[:port]/path`` (Docker Hub when there is no host part) into a base URL and a path."""
    first, _, rest = repository.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        host, path = first, rest
    else:
        host, path = "registry-1.docker.io", repository if "/" in repository else f"library/{repository}"
    bare = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    scheme = "http" if bare in insecure_hosts else "https"
    return ImageRef(base_url=f"{scheme}://{host}", path=path, host=host)


class RegistryClient:
    """One aiohttp session for every registry call of the process; bounded concurrency per sync."""

    def __init__(
        self,
        *,
        timeout_s: float = 10.0,
        concurrency: int = 8,
        insecure_hosts: list[str] | None = None,
        addresses: AddressPolicy | None = None,
    ):
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._concurrency = concurrency
        self._insecure = insecure_hosts or []
        self._addresses = addresses or AddressPolicy()
        self._session: aiohttp.ClientSession | None = None
        self._tokens: dict[tuple[str, str], str] = {}
        self._contexts: dict[str, ssl.SSLContext] = {}

    async def start(self) -> None:
        """Open the shared session: connections only to addresses the policy allows, no proxy from the environment."""
        connector = guarded_connector(self._addresses, purpose=_PURPOSE, limit=max(self._concurrency * 2, 16))
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, raise_for_status=False, trust_env=False
        )

    async def close(self) -> None:
        """Close the shared session."""
        if self._session is not None:
            await self._session.close()

    def check_repository(self, repository: str) -> None:
        """Refuse, before anything is stored, a repository whose registry host is an address the policy refuses.

        A host name is checked again at every connection (its addresses may change); this catches the literal
        address early, with a clear error.

        Raises:
            RegistryAddressForbidden: the host is such an address.
        """
        ref = split_repository(repository, self._insecure)
        try:
            self._check_url(ref.base_url, ref)
        except AddressNotAllowed as exc:
            raise RegistryAddressForbidden(
                f"{exc} (loopback, link-local, private and reserved addresses are refused unless the operator "
                "allows them in STELLA_RELEASE_REGISTRY_ALLOWED_NETWORKS)"
            ) from None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("registry client is not started")
        return self._session

    def _ref(self, repository: str, access: Access | None) -> ImageRef:
        ref = split_repository(repository, self._insecure)
        if access is not None and access.base_url:
            ref = ImageRef(base_url=access.base_url.rstrip("/"), path=ref.path, host=ref.host)
        return ref

    def _tls(self, access: Access | None) -> ssl.SSLContext | bool:
        """The system's trust, plus the integration's CA certificates when it names some (contexts are kept)."""
        if access is None or not access.ca_pem:
            return True
        context = self._contexts.get(access.ca_pem)
        if context is None:
            context = ssl.create_default_context()
            try:
                context.load_verify_locations(cadata=access.ca_pem)
            except (ssl.SSLError, ValueError) as exc:
                raise RegistryUnavailable("the registry integration's ca_pem holds no usable certificate") from exc
            if len(self._contexts) >= 64:
                self._contexts.clear()
            self._contexts[access.ca_pem] = context
        return context

    async def list_tags(self, repository: str, access: Access | None, *, limit: int = 5000) -> list[str]:
        """Every tag of ``repository`` (following pagination), up to ``limit``."""
        ref = self._ref(repository, access)
        url: str | None = f"{ref.base_url}/v2/{ref.path}/tags/list?n=1000"
        tags: list[str] = []
        while url and len(tags) < limit:
            status, headers, body = await self._get(ref, url, access, accept="application/json")
            if status == 404:
                raise RepositoryNotFound(f"registry {ref.host} has no repository {ref.path}")
            _raise_for(status, ref, f"listing tags of {ref.path}")
            try:
                tags.extend(json.loads(body).get("tags") or [])
            except ValueError as exc:
                raise RegistryUnavailable(f"registry {ref.host} sent an unreadable tag list") from exc
            url = _next_link(ref.base_url, headers.get("Link"))
        return sorted(set(tags[:limit]))

    async def resolve(self, repository: str, tag: str, access: Access | None) -> str:
        """The manifest digest ``tag`` points at now."""
        ref = self._ref(repository, access)
        url = f"{ref.base_url}/v2/{ref.path}/manifests/{tag}"
        status, headers, body = await self._get(ref, url, access, accept=MANIFEST_TYPES, method="HEAD")
        if status == 404:
            raise TagNotFound(f"tag {tag!r} does not exist in {repository}")
        _raise_for(status, ref, f"resolving {repository}:{tag}")
        digest = headers.get("Docker-Content-Digest")
        if not digest or not _DIGEST.match(digest):
            # Registries may omit the header on HEAD: the digest is the hash of the manifest bytes.
            status, headers, body = await self._get(ref, url, access, accept=MANIFEST_TYPES)
            _raise_for(status, ref, f"resolving {repository}:{tag}")
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
        return digest

    async def resolve_many(self, repository: str, tags: list[str], access: Access | None) -> dict[str, str]:
        """Resolve several tags with bounded concurrency; all or nothing."""
        gate = asyncio.Semaphore(self._concurrency)

        async def one(tag: str) -> tuple[str, str]:
            async with gate:
                return tag, await self.resolve(repository, tag, access)

        return dict(await asyncio.gather(*(one(t) for t in tags)))

    async def _get(
        self, ref: ImageRef, url: str, access: Access | None, *, accept: str, method: str = "GET"
    ) -> tuple[int, dict[str, str], bytes]:
        creds = access.credentials if access is not None else None
        tls = self._tls(access)
        headers = {"Accept": accept}
        token = self._tokens.get((ref.host, ref.path))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        elif creds is not None:
            headers["Authorization"] = _basic(creds)
        status, resp_headers, body = await self._send(method, url, headers, ref, tls)
        if status == 401:
            challenge = resp_headers.get("WWW-Authenticate", "")
            if challenge.lower().startswith("bearer"):
                token = await self._fetch_token(ref, challenge, creds, tls)
                headers["Authorization"] = f"Bearer {token}"
            elif creds is not None and "Authorization" not in headers:
                headers["Authorization"] = _basic(creds)
            else:
                raise RegistryAuthFailed(
                    f"registry {ref.host} refused access to {ref.path}"
                    + ("" if creds else "; the component names no registry integration with a credential")
                )
            status, resp_headers, body = await self._send(method, url, headers, ref, tls)
            if status in (401, 403):
                raise RegistryAuthFailed(f"registry {ref.host} refused the credentials for {ref.path}")
        return status, resp_headers, body

    async def _send(
        self, method: str, url: str, headers: dict[str, str], ref: ImageRef, tls: ssl.SSLContext | bool = True
    ) -> tuple[int, dict[str, str], bytes]:
        """One request, following up to :data:`MAX_REDIRECTS` redirects, each checked against the address policy.

        Redirects are followed here rather than by aiohttp so that a redirect to a literal address (which no
        resolver sees) is refused too; credentials are not sent on to another host.
        """
        try:
            for _ in range(MAX_REDIRECTS + 1):
                self._check_url(url, ref)
                async with self.session.request(method, url, headers=headers, allow_redirects=False, ssl=tls) as resp:
                    location = resp.headers.get("Location")
                    if resp.status in _REDIRECTS and location:
                        target = urljoin(url, location)
                        if urlsplit(target).netloc != urlsplit(url).netloc:
                            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                        url = target
                        continue
                    body = await resp.read() if method != "HEAD" else b""
                    return resp.status, dict(resp.headers), body
            raise RegistryUnavailable(f"registry {ref.host} redirected more than {MAX_REDIRECTS} times")
        except AddressNotAllowed as exc:
            raise RegistryAddressForbidden(str(exc)) from None
        except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
            raise RegistryUnavailable(_tls_failure(f"registry {ref.host}", exc)) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            forbidden = _forbidden_cause(exc)
            if forbidden is not None:
                raise RegistryAddressForbidden(str(forbidden)) from None
            raise RegistryUnavailable(f"registry {ref.host} is unreachable: {type(exc).__name__}") from exc

    def _check_url(self, url: str, ref: ImageRef) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RegistryUnavailable(f"registry {ref.host} pointed at a URL that is not http(s)")
        check_literal_host(parts.hostname, self._addresses, purpose=_PURPOSE)

    async def _fetch_token(
        self, ref: ImageRef, challenge: str, creds: Credentials | None, tls: ssl.SSLContext | bool = True
    ) -> str:
        params = dict(_CHALLENGE_PARAM.findall(challenge))
        realm = params.pop("realm", None)
        if not realm:
            raise RegistryAuthFailed(f"registry {ref.host} sent a bearer challenge without a realm")
        params.setdefault("scope", f"repository:{ref.path}:pull")
        headers = {"Authorization": _basic(creds)} if creds else {}
        try:
            self._check_url(realm, ref)
            async with self.session.get(realm, params=params, headers=headers, allow_redirects=False, ssl=tls) as resp:
                if resp.status in (401, 403):
                    raise RegistryAuthFailed(f"registry {ref.host} refused the credentials for {ref.path}")
                if resp.status >= 400:
                    raise RegistryUnavailable(f"token service of {ref.host} answered {resp.status}")
                data = await resp.json(content_type=None)
        except AddressNotAllowed as exc:
            raise RegistryAddressForbidden(str(exc)) from None
        except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
            raise RegistryUnavailable(_tls_failure(f"the token service of {ref.host}", exc)) from exc
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            forbidden = _forbidden_cause(exc)
            if forbidden is not None:
                raise RegistryAddressForbidden(str(forbidden)) from None
            raise RegistryUnavailable(f"token service of {ref.host} is unreachable: {type(exc).__name__}") from exc
        token = data.get("token") or data.get("access_token")
        if not token:
            raise RegistryAuthFailed(f"token service of {ref.host} returned no token")
        self._tokens[(ref.host, ref.path)] = token
        return str(token)


def _forbidden_cause(exc: BaseException) -> AddressNotAllowed | None:
    """The address refusal behind a connection error (aiohttp wraps the resolver's error), if that is the cause."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, AddressNotAllowed):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _tls_failure(peer: str, exc: BaseException) -> str:
    """What a TLS failure with ``peer`` says: the certificate is not trusted (the integration's ``ca_pem``), or
    another cause."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return (
            f"TLS with {peer} failed: its certificate is not trusted (add its CA to the registry integration's ca_pem)"
        )
    return f"TLS with {peer} failed: {type(exc).__name__}"


def _basic(creds: Credentials) -> str:
    return "Basic " + base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()


def _raise_for(status: int, ref: ImageRef, doing: str) -> None:
    if status in (401, 403):
        raise RegistryAuthFailed(f"registry {ref.host} refused access while {doing}")
    if status >= 500 or status == 429:
        raise RegistryUnavailable(f"registry {ref.host} answered {status} while {doing}")
    if status >= 400:
        raise RegistryUnavailable(f"registry {ref.host} answered {status} while {doing}")


def _next_link(base_url: str, link: str | None) -> str | None:
    # RFC 5988 Link header: </v2/x/tags/list?n=1000&last=foo>; rel="next"
    if not link:
        return None
    match = re.search(r"<([^>]+)>\s*;\s*rel=\"?next\"?", link)
    return urljoin(base_url, match.group(1)) if match else None
