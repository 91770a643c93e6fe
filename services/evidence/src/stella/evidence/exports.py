"""Where export bundles go: a NATS JetStream object store the gateway reads them from.

A bundle can be far larger than a NATS message (1 MB by default), so the export query does not carry it in
its reply: the bundle is written to the object store bucket and the reply names the object. Objects expire
after ``export_max_age_s``; the gateway streams them to the client in the meantime.

The bucket is named like a stream of the installation's namespace (``STELLA_EVIDENCE_EXPORTS`` or
``STELLA_EVIDENCE_EXPORTS_<NAMESPACE>``), so installations and test runs sharing a server stay apart.
"""

from __future__ import annotations

import logging
from typing import Final

from nats.js import JetStreamContext
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.errors import BadRequestError
from nats.js.object_store import ObjectStore

from stella.contracts.streams import StreamSpec
from stella.kit.naming import Names

log = logging.getLogger(__name__)

EXPORTS: Final[StreamSpec] = StreamSpec(
    name="STELLA_EVIDENCE_EXPORTS",
    subjects=(),
    max_age_s=3600,
    duplicate_window_s=0,
    description="Evidence export bundles waiting for the gateway to fetch them.",
)
"""The object store bucket of export bundles (named through :meth:`Names.stream` like a stream)."""


def bucket_name(names: Names) -> str:
    """The export bucket of the installation's namespace."""
    return names.stream(EXPORTS)


class ExportStore:
    """The object store bucket bundles are written to."""

    def __init__(self, names: Names, *, max_age_s: float) -> None:
        self.bucket = bucket_name(names)
        self.max_age_s = max_age_s
        self._store: ObjectStore | None = None

    async def start(self, js: JetStreamContext) -> None:
        """Create the bucket, or bind to it when it exists (from another replica, or an earlier run)."""
        config = ObjectStoreConfig(
            description=EXPORTS.description, ttl=self.max_age_s, storage=StorageType.FILE, replicas=1
        )
        try:
            self._store = await js.create_object_store(self.bucket, config=config)
        except BadRequestError:
            # Created earlier with another configuration (a changed max age): keep using it as it is.
            log.warning("export bucket exists with another configuration; using it", extra={"bucket": self.bucket})
            self._store = await js.object_store(self.bucket)

    async def put(self, name: str, data: bytes) -> None:
        """Store ``data`` as object ``name`` (chunked by the client, any size)."""
        if self._store is None:
            raise RuntimeError("the export store is not started")
        await self._store.put(name, data)
