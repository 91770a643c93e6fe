"""Outbound connections to hosts a tenant names, made only to addresses the operator allows.

The check is made where the connection is made: an aiohttp connector with :class:`GuardedResolver` keeps only
the allowed addresses of every host name it resolves (also the host of a redirect or of a registry's token
realm), so a name that resolves to a public address when it is saved and to an internal one later (DNS
rebinding) reaches nothing. :func:`guarded_connector` builds such a connector; a host given as a literal
address is refused by :func:`check_literal_host` before any request, since aiohttp does not resolve it.
"""

from __future__ import annotations

import ipaddress
import socket

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from stella.kit.addresses import AddressPolicy


class AddressNotAllowed(OSError):
    """A host resolved only to addresses the policy refuses (aiohttp reports it as a connection error)."""


class GuardedResolver(AbstractResolver):
    """Resolves host names and keeps only the addresses an :class:`AddressPolicy` allows.

    Args:
        policy: Which addresses are allowed.
        purpose: What connects, for the error message (``"a webhook"``, ``"a registry request"``).
        inner: The resolver asked first (the system's, by default).
    """

    def __init__(self, policy: AddressPolicy, *, purpose: str, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._purpose = purpose
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The allowed addresses of ``host``.

        Raises:
            AddressNotAllowed: when it resolves to no allowed address.
        """
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if self._policy.allows(ipaddress.ip_address(r["host"]))]
        if not allowed:
            raise AddressNotAllowed(f"{host} resolves to no address {self._purpose} may reach")
        return allowed

    async def close(self) -> None:
        """Release the inner resolver."""
        await self._inner.close()


def check_literal_host(host: str, policy: AddressPolicy, *, purpose: str) -> None:
    """Refuse ``host`` when it is an address (``127.0.0.1``, ``[::1]``) the policy refuses; names pass.

    aiohttp connects to a literal address without asking the resolver, so a URL naming one is checked here.

    Raises:
        AddressNotAllowed: a literal address the policy refuses.
    """
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return
    if not policy.allows(address):
        raise AddressNotAllowed(f"{host} is not an address {purpose} may reach")


def guarded_connector(
    policy: AddressPolicy, *, purpose: str, limit: int, limit_per_host: int = 0
) -> aiohttp.TCPConnector:
    """A connector whose every connection goes only to addresses ``policy`` allows."""
    return aiohttp.TCPConnector(
        resolver=GuardedResolver(policy, purpose=purpose), limit=limit, limit_per_host=limit_per_host, ttl_dns_cache=10
    )
