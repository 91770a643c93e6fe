"""A real OCI registry for tests, and a client that pushes real images to it.

:class:`LocalRegistry` runs the CNCF distribution registry (Debian's ``docker-registry`` package) on
``127.0.0.1:<free port>`` with filesystem storage, optionally behind htpasswd basic authentication or token
authentication (:class:`TokenAuth`: the registry trusts tokens signed by a key whose certificate chains to a
bundle), and optionally over TLS (:class:`TlsFiles`). It can be stopped and started again on the same port and
storage, to test what happens while a registry is down.

:func:`push_image` builds a single-layer OCI image in memory and uploads it through the OCI distribution
API, the same API the product's registry integration reads.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import secrets
import shutil
import ssl
import subprocess
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

import bcrypt

from stella.kit.embedded import free_port, terminate_process

OCI_MANIFEST: Final[str] = "application/vnd.oci.image.manifest.v1+json"
"""Media type of an OCI image manifest."""

OCI_CONFIG: Final[str] = "application/vnd.oci.image.config.v1+json"
"""Media type of an OCI image configuration blob."""

OCI_LAYER_GZIP: Final[str] = "application/vnd.oci.image.layer.v1.tar+gzip"
"""Media type of a gzip-compressed tar layer."""

BUSYBOX_PATH: Final[Path] = Path("/bin/busybox")
"""Where Debian's ``busybox-static`` installs its statically linked binary."""

_REQUEST_TIMEOUT = 30.0
_READY_TIMEOUT = 20.0
_STOP_TIMEOUT = 10.0

Auth = tuple[str, str]
"""Basic authentication credentials: ``(username, password)``."""


class RegistryError(RuntimeError):
    """A registry request failed or the registry could not be started.

    Attributes:
        status: The HTTP status, or None when the registry could not be reached.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def find_registry_binary() -> Path | None:
    """Locate the distribution registry executable.

    ``STELLA_TEST_REGISTRY_BIN`` wins; then ``docker-registry`` (Debian's name) and ``registry`` (the
    upstream name) on PATH.

    Returns:
        The executable, or None when it is not installed.
    """
    configured = os.environ.get("STELLA_TEST_REGISTRY_BIN")
    if configured:
        return Path(configured) if os.access(configured, os.X_OK) else None
    for name in ("docker-registry", "registry"):
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def busybox_files() -> dict[str, bytes] | None:
    """Return layer files holding the static busybox binary as ``bin/busybox``, if it is installed.

    Returns:
        ``{"bin/busybox": <bytes>}``, or None when ``busybox-static`` is not installed.
    """
    if not BUSYBOX_PATH.is_file():
        return None
    return {"bin/busybox": BUSYBOX_PATH.read_bytes()}


@dataclass(frozen=True)
class TlsFiles:
    """The registry's TLS: its certificate and key, and the CA a client trusts it by (PEM files)."""

    certificate: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class TokenAuth:
    """Token authentication (``auth: token``): clients get a token from ``realm``; the registry accepts tokens
    for ``service`` from ``issuer`` signed by a key whose certificate chains to ``root_cert_bundle``."""

    realm: str
    service: str
    issuer: str
    root_cert_bundle: Path


class LocalRegistry:
    """A distribution registry process on loopback with filesystem storage.

    Args:
        root: Directory for the storage, configuration and log; kept across :meth:`restart`.
        users: ``{username: password}`` for htpasswd basic authentication; None serves anonymously.
        port: TCP port; a free one is chosen at the first start when None.
        binary: The registry executable; :func:`find_registry_binary` when None.
        tls: Serve HTTPS with these files instead of plain HTTP.
        token: Token authentication instead of ``users``.
    """

    def __init__(
        self,
        root: Path,
        *,
        users: Mapping[str, str] | None = None,
        port: int | None = None,
        binary: Path | None = None,
        tls: TlsFiles | None = None,
        token: TokenAuth | None = None,
    ) -> None:
        self.root = root
        self.users = dict(users) if users else None
        self.port = port
        self.host = "127.0.0.1"
        self.binary = binary
        self.tls = tls
        self.token = token
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def address(self) -> str:
        """``host:port``, the registry part of an image reference."""
        if self.port is None:
            raise RegistryError("the registry port is chosen at start; start the registry first")
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The base URL, ``http://host:port`` (``https://`` with TLS)."""
        return f"{'https' if self.tls else 'http'}://{self.address}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client context trusting the registry's CA (None without TLS)."""
        return ssl.create_default_context(cafile=str(self.tls.ca)) if self.tls else None

    @property
    def credentials(self) -> Auth | None:
        """The first configured user's credentials, or None for an anonymous registry."""
        if not self.users:
            return None
        username, password = next(iter(self.users.items()))
        return username, password

    @property
    def running(self) -> bool:
        """Whether the registry process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Path:
        """Where the registry writes its log."""
        return self.root / "registry.log"

    def _write_config(self, port: int) -> Path:
        config: dict[str, object] = {
            "version": "0.1",
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.root / "storage")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            # A fixed secret keeps upload state valid across restarts (and silences a warning).
            "http": {"addr": f"{self.host}:{port}", "secret": self._secret()},
        }
        if self.tls:
            config["http"] = {
                **config["http"],  # type: ignore[dict-item]
                "tls": {"certificate": str(self.tls.certificate), "key": str(self.tls.key)},
            }
        if self.token:
            config["auth"] = {
                "token": {
                    "realm": self.token.realm,
                    "service": self.token.service,
                    "issuer": self.token.issuer,
                    "rootcertbundle": str(self.token.root_cert_bundle),
                }
            }
        if self.users:
            htpasswd = self.root / "htpasswd"
            htpasswd.write_text(
                "".join(
                    f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}\n"
                    for user, password in self.users.items()
                )
            )
            config["auth"] = {"htpasswd": {"realm": "stella-test", "path": str(htpasswd)}}
        path = self.root / "config.yml"
        # JSON is valid YAML, and needs no YAML library.
        path.write_text(json.dumps(config, indent=2))
        return path

    def _secret(self) -> str:
        secret_file = self.root / "http-secret"
        if not secret_file.exists():
            secret_file.write_text(secrets.token_hex(32))
        return secret_file.read_text()

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/", timeout=1.0, context=self.ssl_context()) as response:  # noqa: S310
                return int(response.status) == 200
        except urllib.error.HTTPError as exc:
            return exc.code == 401  # an authenticating registry is up and asks for credentials
        except OSError:
            return False

    def start(self) -> Self:
        """Start the registry and wait until its API answers.

        Returns:
            The registry itself.

        Raises:
            RegistryError: when the executable is missing or the registry does not start.
        """
        if self.running:
            return self
        binary = self.binary or find_registry_binary()
        if binary is None:
            raise RegistryError("docker-registry is not installed (apt-get install docker-registry)")
        self.root.mkdir(parents=True, exist_ok=True)
        chosen_port = self.port is None
        for _ in range(5 if chosen_port else 1):
            port = free_port(self.host) if chosen_port else self.port
            assert port is not None
            config = self._write_config(port)
            self.port = port
            self._log = self.log_path.open("ab")
            self._process = subprocess.Popen(
                [str(binary), "serve", str(config)],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            # Readiness of a listening socket raises no event; poll the API root briefly.
            deadline = time.monotonic() + _READY_TIMEOUT
            while time.monotonic() < deadline and self._process.poll() is None and not self._answers():
                time.sleep(0.02)
            if self._answers():
                return self
            self._terminate()
            log_text = self.log_path.read_text(errors="replace")[-4000:]
            if not (chosen_port and "address already in use" in log_text):
                raise RegistryError(f"the registry did not start on {self.address}:\n{log_text}")
            self.port = None
        raise RegistryError("the registry found no free port after several attempts")

    def _terminate(self) -> None:
        process, self._process = self._process, None
        terminate_process(process, _STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        """Stop the registry; its storage and port are kept for :meth:`start`. Safe to call twice."""
        self._terminate()

    def restart(self) -> Self:
        """Stop the registry if it runs and start it again on the same port and storage.

        Returns:
            The registry itself.
        """
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class RegistryResponse:
    """An HTTP response from a registry."""

    status: int
    headers: Message
    body: bytes


def request(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    auth: Auth | None = None,
    bearer: str | None = None,
    context: ssl.SSLContext | None = None,
) -> RegistryResponse:
    """Send one HTTP request to a registry.

    Args:
        method: HTTP method.
        url: Absolute URL.
        body: Request body.
        headers: Extra request headers.
        auth: Basic authentication credentials.
        bearer: A token sent as ``Authorization: Bearer`` (a token-authenticating registry).
        context: TLS context (a registry whose CA the system does not trust).

    Returns:
        The response, whatever its status.

    Raises:
        RegistryError: when the registry cannot be reached.
    """
    all_headers = dict(headers or {})
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        all_headers["Authorization"] = f"Basic {token}"
    if bearer is not None:
        all_headers["Authorization"] = f"Bearer {bearer}"
    outgoing = urllib.request.Request(url, data=body, headers=all_headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(outgoing, timeout=_REQUEST_TIMEOUT, context=context) as response:  # noqa: S310
            return RegistryResponse(int(response.status), response.headers, response.read())
    except urllib.error.HTTPError as exc:
        return RegistryResponse(exc.code, exc.headers, exc.read())
    except OSError as exc:
        raise RegistryError(f"{method} {url}: registry unreachable ({exc})") from exc


def _expect(response: RegistryResponse, status: int, what: str) -> RegistryResponse:
    if response.status != status:
        detail = response.body.decode(errors="replace")[:500]
        raise RegistryError(f"{what}: HTTP {response.status}: {detail}", response.status)
    return response


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def upload_blob(
    registry_url: str,
    repository: str,
    data: bytes,
    *,
    auth: Auth | None = None,
    bearer: str | None = None,
    context: ssl.SSLContext | None = None,
) -> str:
    """Upload a blob in one piece (POST to open an upload, PUT with the digest to finish it).

    Args:
        registry_url: ``http://host:port``.
        repository: Repository name, e.g. ``stella/api``.
        data: The blob.
        auth: Basic authentication credentials.
        bearer: A registry token (see :func:`request`).
        context: TLS context (see :func:`request`).

    Returns:
        The blob's digest, ``sha256:<hex>``.

    Raises:
        RegistryError: when the registry refuses the upload.
    """
    digest = _sha256(data)
    base = registry_url.rstrip("/")
    opened = _expect(
        request("POST", f"{base}/v2/{repository}/blobs/uploads/", body=b"", auth=auth, bearer=bearer, context=context),
        202,
        f"open blob upload in {repository}",
    )
    location = opened.headers.get("Location")
    if not location:
        raise RegistryError(f"open blob upload in {repository}: no Location header", opened.status)
    # The Location may be relative and may already carry query parameters (upload state).
    target = urllib.parse.urljoin(base + "/", location)
    target += ("&" if "?" in target else "?") + urllib.parse.urlencode({"digest": digest})
    _expect(
        request(
            "PUT",
            target,
            body=data,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
            auth=auth,
            bearer=bearer,
            context=context,
        ),
        201,
        f"upload blob {digest} to {repository}",
    )
    return digest


def _layer(files: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in sorted(files):
            content = files[name]
            info = tarfile.TarInfo(name.lstrip("/"))
            info.size = len(content)
            # Fixed metadata keeps the layer, and so the image digest, reproducible.
            info.mtime = 0
            info.uid = info.gid = 0
            executable = content.startswith((b"\x7fELF", b"#!"))
            info.mode = 0o755 if executable else 0o644
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def push_image(
    registry_url: str,
    repository: str,
    tag: str,
    *,
    files: Mapping[str, bytes] | None = None,
    config: Mapping[str, object] | None = None,
    auth: Auth | None = None,
    bearer: str | None = None,
    context: ssl.SSLContext | None = None,
) -> str:
    """Push a single-layer OCI image and tag it.

    The layer is a gzip tar of ``files``; by default one small file whose content names
    ``repository:tag``, so different tags get different digests. Pass :func:`busybox_files` for an image
    with a working binary. The same inputs always give the same digest.

    Args:
        registry_url: ``http://host:port``.
        repository: Repository name, e.g. ``stella/api``.
        tag: Tag to put the manifest under.
        files: ``{path inside the image: content}``.
        config: The image's run configuration (OCI ``config``: ``Cmd``, ``Entrypoint``, ``ExposedPorts``,
            ``Healthcheck``, ``Labels``...), merged over ``{"Env": ["PATH=/bin"]}``.
        auth: Basic authentication credentials.
        bearer: A registry token allowing push (see :func:`request`).
        context: TLS context (see :func:`request`).

    Returns:
        The manifest digest exactly as the registry reported it (``Docker-Content-Digest``).

    Raises:
        RegistryError: when the registry refuses a request or reports no digest.
    """
    contents = dict(files) if files is not None else {"etc/stella-image": f"{repository}:{tag}\n".encode()}
    layer_tar = _layer(contents)
    layer = gzip.compress(layer_tar, mtime=0)
    config_blob = _canonical_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], **(config or {})},
            "rootfs": {"type": "layers", "diff_ids": [_sha256(layer_tar)]},
        }
    )
    layer_digest = upload_blob(registry_url, repository, layer, auth=auth, bearer=bearer, context=context)
    config_digest = upload_blob(registry_url, repository, config_blob, auth=auth, bearer=bearer, context=context)
    manifest = _canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_blob)},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer_digest, "size": len(layer)}],
        }
    )
    response = _expect(
        request(
            "PUT",
            f"{registry_url.rstrip('/')}/v2/{repository}/manifests/{tag}",
            body=manifest,
            headers={"Content-Type": OCI_MANIFEST},
            auth=auth,
            bearer=bearer,
            context=context,
        ),
        201,
        f"put manifest {repository}:{tag}",
    )
    digest = response.headers.get("Docker-Content-Digest")
    if not digest:
        raise RegistryError(f"put manifest {repository}:{tag}: no Docker-Content-Digest header", 201)
    return digest


def fetch_manifest(registry_url: str, repository: str, reference: str, *, auth: Auth | None = None) -> RegistryResponse:
    """GET a manifest by tag or digest, accepting OCI and Docker v2 manifests.

    Args:
        registry_url: ``http://host:port``.
        repository: Repository name.
        reference: A tag or a ``sha256:`` digest.
        auth: Basic authentication credentials.

    Returns:
        The response, whatever its status (401 without valid credentials, 404 when unknown).

    Raises:
        RegistryError: when the registry cannot be reached.
    """
    accept = ", ".join(
        (
            OCI_MANIFEST,
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        )
    )
    return request(
        "GET",
        f"{registry_url.rstrip('/')}/v2/{repository}/manifests/{reference}",
        headers={"Accept": accept},
        auth=auth,
    )
