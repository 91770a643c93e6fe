"""Which credential references a tenant may use, and reading the secret behind an allowed one.

Deprecated: registry credentials are named through a ``registry`` integration (:mod:`stella.release.integrations`).
No new reference is accepted; those stored before are still read, only as a fallback, under the rules below.

A component's ``registry_credential_ref`` (``env:NAME`` or ``file:/path``, holding ``user:password``) names a
secret on the release service's host. A client must never make the service read whatever it names: that
would hand the host's environment and files (``env:STELLA_DATABASE_URL``, ``file:/proc/self/environ``) to
a registry the client controls. So only references the operator lists for a tenant in
``STELLA_RELEASE_CREDENTIAL_REFS`` are accepted, when a component is saved and again every time one is
read (a reference stored before it was allowed, or since removed from the list, is refused then).

Nothing about the host leaks through the errors: a refused reference and an allowed one that cannot be
read (missing, unreadable, not ``user:password``) answer with the same kind of message, which says
nothing about whether a variable is set or a file exists; the service's log has the details.
"""

from __future__ import annotations

import logging
from uuid import UUID

from stella.kit.credentials import ANY_TENANT, HostCredentialAllowList
from stella.kit.errors import Unprocessable
from stella.release.registry import Credentials

log = logging.getLogger(__name__)

__all__ = ["ANY_TENANT", "CredentialPolicy", "CredentialRefNotAllowed", "CredentialUnresolved"]


class CredentialRefNotAllowed(Unprocessable):
    """The reference is not one the operator allows this tenant to use."""

    code = "REL_CREDENTIAL_REF_NOT_ALLOWED"
    title = "Credential reference not allowed"


class CredentialUnresolved(Unprocessable):
    """An allowed credential reference could not be read; the details are in the service's log only."""

    code = "REL_CREDENTIAL_UNRESOLVED"
    title = "Credential reference cannot be resolved"


class CredentialPolicy(HostCredentialAllowList):
    """The operator's allow-list of credential references, per tenant id (and :data:`ANY_TENANT`)
    (``STELLA_RELEASE_CREDENTIAL_REFS``), with the release service's errors.
    """

    def check(self, tenant_id: UUID, ref: str | None) -> None:
        """Refuse a reference the tenant may not use (None, no reference, is always fine).

        Raises:
            CredentialRefNotAllowed: with a message that says nothing about the host.
        """
        if ref is not None and not self.allows(tenant_id, ref):
            raise CredentialRefNotAllowed(
                f"the credential reference {ref!r} is not one this tenant may use; the operator lists the "
                "allowed ones in STELLA_RELEASE_CREDENTIAL_REFS"
            )

    def resolve(self, tenant_id: UUID, ref: str | None) -> Credentials | None:
        """Read ``user:password`` behind an allowed reference; None when there is no reference.

        Raises:
            CredentialRefNotAllowed: the tenant may not use ``ref`` (nothing is read).
            CredentialUnresolved: an allowed reference could not be read or is malformed.
        """
        if ref is None:
            return None
        self.check(tenant_id, ref)
        value = self.read(ref)
        username, sep, password = (value or "").partition(":")
        if not sep or not username:
            log.warning("an allowed credential reference gives no user:password", extra={"scheme": ref.split(":")[0]})
            raise CredentialUnresolved(
                f"the secret named by {ref!r} could not be read as user:password; ask the operator to check it"
            )
        return Credentials(username, password)
