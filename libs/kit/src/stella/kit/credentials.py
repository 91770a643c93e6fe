"""The operator's allow-list of host credential references (``env:NAME``, ``file:/path``) per tenant.

A reference names a secret on a service's host. A client must never make a service read whatever it names:
that would hand the host's environment and files (``env:STELLA_DATABASE_URL``, ``file:/proc/self/environ``)
to a system the client controls. So only references the operator lists for a tenant are accepted, when
something naming one is saved and again every time one is read. Services that accept such references
(the release service's ``STELLA_RELEASE_CREDENTIAL_REFS``, the integration service's
``STELLA_INTEGRATION_CREDENTIAL_REFS``) build their policy on :class:`HostCredentialAllowList`.

Nothing about the host leaks through what this module reports: reading an allowed reference that is missing
or unreadable gives None, and the log line says why without the value.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final
from uuid import UUID

log = logging.getLogger(__name__)

ANY_TENANT: Final[str] = "*"
"""Key of an allow-list whose references every tenant may use (single-tenant installs)."""

HOST_SCHEMES: Final[frozenset[str]] = frozenset({"env", "file"})
"""Reference schemes that read the service's host: operator-only."""


class HostCredentialAllowList:
    """Tenant id (as text) or :data:`ANY_TENANT` -> the host references that tenant may use.

    Args:
        allowed: The operator's configuration.
    """

    def __init__(self, allowed: Mapping[str, Sequence[str]] | None = None) -> None:
        self._allowed = {tenant.strip().lower(): frozenset(refs) for tenant, refs in (allowed or {}).items()}

    def allows(self, tenant_id: UUID, ref: str) -> bool:
        """Whether ``tenant_id`` may use ``ref``."""
        return ref in self._allowed.get(str(tenant_id), frozenset()) or ref in self._allowed.get(
            ANY_TENANT, frozenset()
        )

    def read(self, ref: str) -> str | None:
        """The text behind an ``env:`` or ``file:`` reference (stripped), None when it cannot be read.

        The caller checks :meth:`allows` first; this reads what it is given.
        """
        scheme, _, target = ref.partition(":")
        if scheme == "env":
            value = os.environ.get(target)
            if value is None:
                log.warning("the environment variable of an allowed credential reference is not set")
            return value
        if scheme == "file":
            try:
                return Path(target).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                log.warning("cannot read the credential file of an allowed reference", extra={"error": repr(exc)})
                return None
        return None
