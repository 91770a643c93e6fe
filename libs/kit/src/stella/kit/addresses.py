"""Which addresses an outbound connection may reach (against server-side request forgery).

A tenant names hosts the services connect to (a webhook URL, a component's image repository, the token realm a
registry points at). Such a connection must not reach the services' own network: loopback, link-local (cloud
metadata at ``169.254.169.254``), private, shared, reserved, multicast and unspecified addresses are refused
unless the operator's allow-list names them. This module is the pure policy; :mod:`stella.kit.egress` applies it
where connections are made.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")


def parse_networks(value: object) -> object:
    """A comma-separated list of networks (``"10.0.0.0/8, 127.0.0.1"``) as a tuple; other values unchanged.

    For a settings validator (``mode="before"``): an address without a prefix is a one-address network.
    """
    if isinstance(value, str):
        return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in value.split(",") if part.strip())
    return value


def unwrap(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one stands for (``::ffff:127.0.0.1``, NAT64 ``64:ff9b::7f00:1``), else itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses an outbound connection may reach.

    Attributes:
        allowed_networks: Networks allowed although they are not public (the operator's allow-list).
    """

    allowed_networks: tuple[IPNetwork, ...] = ()

    def allows(self, address: IPAddress) -> bool:
        """Whether a connection may be made to ``address``.

        Public unicast addresses are allowed; everything else (loopback, link-local, private, shared, reserved,
        multicast, unspecified) only when the allow-list names it. An IPv4 address written as IPv6 is judged as
        the IPv4 address it stands for.
        """
        address = unwrap(address)
        if any(address in network for network in self.allowed_networks if network.version == address.version):
            return True
        return address.is_global and not address.is_multicast
