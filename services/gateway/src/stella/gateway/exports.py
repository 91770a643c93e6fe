"""Evidence export bundles: read from the JetStream object store the evidence service wrote them to.

A bundle can be far larger than a NATS message, so the evidence service's export query does not carry it:
the service stores the bundle as an object of a bucket of the installation's namespace and answers where it
is and what it holds (:class:`~stella.contracts.evidence.ExportBundleView`). The gateway checks that the object is there with the size and
SHA-256 the reply announced, then passes it to the client chunk by chunk as the chunks arrive, so the
download starts at once and the headers (``Content-Length``, digest) are known before the first byte.

The object store client verifies the object's digest after its last chunk, and that chunk is passed on only
once the check passed. When it fails the stream ends with an error and the client gets fewer bytes than
``Content-Length`` said: a download that cannot be mistaken for a complete one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
from collections.abc import AsyncIterator
from typing import Final

from nats.js import JetStreamContext
from nats.js import errors as js_errors
from nats.js.object_store import ObjectStore

from stella.contracts.evidence import ExportBundleView
from stella.gateway.problems import ProblemError

log = logging.getLogger(__name__)

MEDIA_TYPE: Final[str] = "application/gzip"
"""Media type of an export bundle (a gzip-compressed tar archive)."""

_DIGEST_PREFIX: Final[str] = "sha-256="


class BundleSizeError(RuntimeError):
    """An export bundle turned out larger or smaller than announced while it was streamed."""


class _QueueWriter(io.BufferedIOBase):
    """A file-like sink the object store client writes chunks into (from an executor thread).

    Each chunk is handed to the event loop's queue; ``call_soon_threadsafe`` keeps them in write order and
    ahead of the object store client's next step, which waits for the write to return.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes | None]) -> None:
        super().__init__()
        self._loop = loop
        self._queue = queue

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        chunk = bytes(data)
        self._loop.call_soon_threadsafe(self._queue.put_nowait, chunk)
        return len(chunk)


class BundleReader:
    """Opens export bundles in the object store.

    Args:
        js: The gateway's JetStream context.
    """

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def open(self, bundle: ExportBundleView) -> AsyncIterator[bytes]:
        """Check that ``bundle`` is stored as announced and return an iterator over its bytes.

        Raises:
            ProblemError: 502 ``SYS_BAD_GATEWAY`` when the bucket or object is missing or differs from the
                reply (size or digest).
        """
        try:
            store = await self.js.object_store(bundle.bucket)
            info = await store.get_info(bundle.object)
        except (js_errors.BucketNotFoundError, js_errors.ObjectNotFoundError, js_errors.InvalidBucketNameError) as exc:
            log.error("an export bundle named by the evidence service is missing", extra={"bucket": bundle.bucket})
            raise ProblemError(
                502, "SYS_BAD_GATEWAY", "The evidence service named an export bundle that is not stored."
            ) from exc
        if info.size != bundle.size or _hex_digest(info.digest) != bundle.sha256:
            log.error(
                "an export bundle differs from the evidence service's description",
                extra={"bucket": bundle.bucket, "size": info.size, "expected_size": bundle.size},
            )
            raise ProblemError(502, "SYS_BAD_GATEWAY", "The stored export bundle differs from its description.")
        return _chunks(store, bundle.object, bundle.size)


def _hex_digest(digest: str | None) -> str | None:
    """The hex form of an object store digest (``SHA-256=<url-safe base64>``)."""
    if not digest or not digest.lower().startswith(_DIGEST_PREFIX):
        return None
    try:
        return base64.urlsafe_b64decode(digest[len(_DIGEST_PREFIX) :]).hex()
    except ValueError:
        return None


async def _chunks(store: ObjectStore, name: str, size: int) -> AsyncIterator[bytes]:
    """Yield the object's chunks as the object store client receives them, ``size`` bytes in all.

    Raises:
        DigestMismatchError: the object's bytes do not match its digest (before its last chunk is yielded).
        BundleSizeError: the object holds more or fewer than ``size`` bytes (before the excess, or the last
            chunk, is yielded).
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
    reading = asyncio.create_task(store.get(name, writeinto=_QueueWriter(loop, queue)), name="export-bundle-read")
    reading.add_done_callback(lambda _: queue.put_nowait(None))
    held: bytes | None = None
    try:
        # Each chunk is held back until the next one arrives, and the last one until the object store client
        # checked the whole object's digest: a corrupt object never reaches Content-Length bytes.
        received = 0
        while (chunk := await queue.get()) is not None:
            received += len(chunk)
            if received > size:
                raise BundleSizeError(f"object {name!r} holds more than the {size} bytes announced")
            if held is not None:
                yield held
            held = chunk
        await reading
        if received != size:
            raise BundleSizeError(f"object {name!r} holds {received} bytes, not the {size} announced")
        if held is not None:
            yield held
    finally:
        if not reading.done():
            # The client went away mid-download, or the object was refused part way.
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading


def digest_headers(bundle: ExportBundleView) -> dict[str, str]:
    """Headers naming the bundle's SHA-256: ``ETag``, ``Digest`` (RFC 3230) and ``Repr-Digest`` (RFC 9530)."""
    encoded = base64.b64encode(bytes.fromhex(bundle.sha256)).decode()
    return {
        "ETag": f'"sha256:{bundle.sha256}"',
        "Digest": f"sha-256={encoded}",
        "Repr-Digest": f"sha-256=:{encoded}:",
    }


__all__ = ["MEDIA_TYPE", "BundleReader", "BundleSizeError", "digest_headers"]
