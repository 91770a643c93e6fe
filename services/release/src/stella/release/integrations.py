"""A component's registry connection through a ``registry`` integration of the integration service.

The release service never reads the integration service's tables: it asks over NATS
(:data:`stella.contracts.integration.GET_REGISTRY_CONNECTION`) and gets the registry's URL and the decrypted
credential, which travels only on the internal bus and is neither stored nor logged here. The credential is
used only for a repository on the integration's own registry host, so naming another tenant's or another
host's registry cannot send it elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit
from uuid import UUID, uuid4

from stella.contracts.envelope import ErrorDetail
from stella.contracts.integration import GET_REGISTRY_CONNECTION, GetRegistryConnection, RegistryConnection
from stella.kit.asking import Refused, ask
from stella.kit.broker import ServiceClient
from stella.kit.errors import Unavailable, Unprocessable
from stella.release.registry import Access, Credentials, split_repository


class RegistryIntegrationNotFound(Unprocessable):
    """The component names a registry integration the tenant does not have."""

    code = "REL_REGISTRY_INTEGRATION_NOT_FOUND"
    title = "Registry integration not found"


class RegistryIntegrationUnusable(Unprocessable):
    """The integration exists but cannot be used for this component (not a registry, credential unreadable,
    or another registry host than the component's)."""

    code = "REL_REGISTRY_INTEGRATION_UNUSABLE"
    title = "Registry integration cannot be used"


class IntegrationServiceUnavailable(Unavailable):
    """The integration service did not answer; nothing was changed."""

    code = "REL_INTEGRATION_UNAVAILABLE"
    title = "Integration service unavailable"


class RegistryIntegrations:
    """Asks the integration service for registry connections.

    Args:
        client: The service's client (available once the runtime started).
        insecure_hosts: Registry hosts reached over plain HTTP, as the registry client has them.
        timeout_s: Seconds to wait for the answer.
    """

    def __init__(self, client: Callable[[], ServiceClient], insecure_hosts: list[str], timeout_s: float = 5.0) -> None:
        self._client = client
        self._insecure = insecure_hosts
        self._timeout = timeout_s

    async def access(self, tenant_id: UUID, integration_id: UUID, repository: str) -> Access:
        """How to read ``repository`` through the integration: its credential (None: anonymous), its CA
        certificates and its URL (whose scheme wins over the insecure-hosts default).

        Raises:
            RegistryIntegrationNotFound: no such integration in the tenant.
            RegistryIntegrationUnusable: it cannot serve this repository.
            IntegrationServiceUnavailable: the integration service did not answer.
        """
        query = GetRegistryConnection(tenant_id=tenant_id, correlation_id=uuid4(), integration_id=integration_id)

        def unavailable(error: ErrorDetail) -> Exception:
            return IntegrationServiceUnavailable(f"the integration service did not answer: {error.detail}")

        try:
            connection = await ask(
                self._client(),
                GET_REGISTRY_CONNECTION,
                query,
                RegistryConnection,
                timeout=self._timeout,
                unavailable=unavailable,
            )
        except Refused as exc:
            if exc.status == 404:
                raise RegistryIntegrationNotFound(f"there is no integration {integration_id}") from None
            raise RegistryIntegrationUnusable(f"integration {integration_id}: {exc.detail}") from None
        wanted = split_repository(repository, self._insecure).host.lower()
        offered = urlsplit(connection.url).netloc.lower()
        if wanted != offered:
            raise RegistryIntegrationUnusable(
                f"integration {integration_id} is for registry {offered}, not {wanted} of {repository}"
            )
        credentials = None
        if connection.username is not None:
            password = connection.password.get_secret_value() if connection.password is not None else ""
            credentials = Credentials(connection.username, password)
        parts = urlsplit(connection.url)
        return Access(credentials, connection.ca_pem, f"{parts.scheme}://{parts.netloc}")
