"""A registry that lies: it serves another image's manifest for a pinned digest.

:class:`TamperingRegistry` is an HTTP proxy on loopback in front of a real
:class:`~stella.testing.registry.LocalRegistry`. Every request is forwarded unchanged, except a manifest
request (``GET``/``HEAD /v2/<repository>/manifests/<digest>``) for a digest registered with
:meth:`TamperingRegistry.swap`: the proxy answers with the manifest of the substitute digest and still
claims the pinned one in ``Docker-Content-Digest``, the way a compromised registry or mirror would. A
client that trusts the registry's word runs the wrong image; one that checks the digest refuses it.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self

from stella.testing.images import AppImage, push_app_image
from stella.testing.messaging import unique_token
from stella.testing.registry import LocalRegistry, RegistryResponse, fetch_manifest, request

_FORWARDED_REQUEST_HEADERS = ("Accept", "Authorization", "Content-Type", "Range")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}


class TamperingRegistry:
    """A forwarding proxy to ``upstream`` that swaps chosen manifests.

    Args:
        upstream: The real registry (started).
    """

    def __init__(self, upstream: LocalRegistry) -> None:
        self.upstream = upstream
        self.host = "127.0.0.1"
        self._swaps: dict[tuple[str, str], str] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.served_swaps = 0
        """How many tampered manifests were served."""

    @property
    def address(self) -> str:
        """``host:port`` of the proxy, the registry part of an image reference through it."""
        if self._server is None:
            raise RuntimeError("start the tampering registry first")
        return f"{self.host}:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.address}"

    def swap(self, repository: str, pinned_digest: str, substitute_digest: str) -> None:
        """Serve ``substitute_digest``'s manifest whenever ``repository@pinned_digest`` is asked for.

        Args:
            repository: Repository name inside the registry (without host).
            pinned_digest: The digest a client pins.
            substitute_digest: The digest of the manifest actually served (must exist upstream).
        """
        self._swaps[(repository, pinned_digest)] = substitute_digest

    def _answer(self, method: str, path: str, headers: dict[str, str], body: bytes | None) -> RegistryResponse:
        parts = path.split("?", 1)[0].split("/")
        # /v2/<repository...>/manifests/<reference>
        if len(parts) >= 5 and parts[1] == "v2" and parts[-2] == "manifests" and method in ("GET", "HEAD"):
            repository, reference = "/".join(parts[2:-2]), parts[-1]
            substitute = self._swaps.get((repository, reference))
            if substitute is not None:
                auth = self.upstream.credentials
                served = fetch_manifest(self.upstream.url, repository, substitute, auth=auth)
                if served.status == 200:
                    served.headers.replace_header("Docker-Content-Digest", reference)
                    self.served_swaps += 1
                return served
        return request(method, f"{self.upstream.url}{path}", body=body, headers=headers)

    def start(self) -> Self:
        """Listen on a free loopback port and serve in a background thread.

        Returns:
            The proxy itself.
        """
        if self._server is not None:
            return self
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                # A client may send a header several times (Docker sends one Accept per media type).
                headers = {
                    name: ", ".join(values)
                    for name in _FORWARDED_REQUEST_HEADERS
                    if (values := self.headers.get_all(name))
                }
                response = proxy._answer(self.command, self.path, headers, body)
                self.send_response(response.status)
                for name, value in response.headers.items():
                    if name.lower() not in _HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(response.body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

            def log_message(self, format: str, *args: object) -> None:
                """Keep test output quiet."""

        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="tampering-registry", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving. Safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def tampered_image(registry: LocalRegistry, proxy: TamperingRegistry, substitute: AppImage) -> AppImage:
    """A new image (never pulled by the engine) named through ``proxy``, which serves ``substitute`` instead.

    The pinned image must be new to the engine: an engine that already holds a digest's content uses it
    without asking the registry again, so a swap would never be served.

    Args:
        registry: The real registry behind ``proxy``.
        proxy: The tampering proxy.
        substitute: The image whose content the proxy serves instead (its version and health are copied).

    Returns:
        The pinned image as a release names it: through the proxy, at the digest the registry gave it.
    """
    marker = unique_token()
    repository = f"stella-test/tampered-{marker}"
    pinned = push_app_image(registry, repository, "1.0.0", f"pinned {marker}")
    substitute_here = push_app_image(registry, repository, "other", substitute.version, healthy=substitute.healthy)
    proxy.swap(repository, pinned.digest, substitute_here.digest)
    return AppImage(f"{proxy.address}/{repository}", pinned.digest, pinned.version, True)
