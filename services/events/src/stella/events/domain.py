"""The rules of public events and webhooks, without I/O, clock or randomness.

* Which URLs a webhook may have and which addresses a delivery may reach (server-side request forgery: a
  tenant must not make the service call its own network).
* When a failed delivery is tried again (exponential back-off with jitter for a retry window).
* When a webhook that keeps failing is disabled.
* The id of the public event an internal event becomes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final
from urllib.parse import urlsplit
from uuid import UUID, uuid5

from stella.contracts.events import MAX_URL_LENGTH
from stella.contracts.public import MAX_TYPE_FILTERS, check_type_filter
from stella.kit import addresses as kit_addresses
from stella.kit.errors import BadRequest, Conflict, NotFound, Unprocessable

PUBLIC_EVENT_IDS: Final[UUID] = UUID("8f4d2a61-3c7b-4e15-9a0d-6b2e8c1f5a37")
"""Namespace of public event ids: one id per internal event, however often it is delivered."""

IPAddress = kit_addresses.IPAddress


# --- errors ----------------------------------------------------------------------------------------------


class InvalidWebhookUrl(BadRequest):
    """The URL is not an absolute http(s) URL with a host."""

    code = "VAL_WEBHOOK_URL_INVALID"
    title = "Invalid webhook URL"


class WebhookUrlNotHttps(Unprocessable):
    """The URL is plain HTTP while HTTPS is required."""

    code = "VAL_WEBHOOK_URL_NOT_HTTPS"
    title = "Webhook URL must use HTTPS"


class WebhookUrlForbidden(Unprocessable):
    """The URL reaches an address that is not public (loopback, link-local, private, reserved...)."""

    code = "VAL_WEBHOOK_URL_FORBIDDEN"
    title = "Webhook URL reaches a forbidden address"


class WebhookUrlUnresolvable(Unprocessable):
    """The URL's host name does not resolve."""

    code = "VAL_WEBHOOK_URL_UNRESOLVABLE"
    title = "Webhook URL host does not resolve"


class UnknownEventType(BadRequest):
    """An event type filter names no public event type."""

    code = "VAL_UNKNOWN_EVENT_TYPE"
    title = "Unknown event type"


class WebhookNotFound(NotFound):
    """No such webhook in the tenant."""

    code = "INT_WEBHOOK_NOT_FOUND"
    title = "Webhook not found"


class DeliveryNotFound(NotFound):
    """No such delivery of the webhook."""

    code = "INT_DELIVERY_NOT_FOUND"
    title = "Delivery not found"


class WebhookDisabled(Conflict):
    """The webhook is disabled: nothing is delivered to it until it is enabled again."""

    code = "INT_WEBHOOK_DISABLED"
    title = "Webhook disabled"


class InvalidFilter(BadRequest):
    """A resource filter is not ``<kind>/<uuid>``."""

    code = "VAL_INVALID_RESOURCE_FILTER"
    title = "Invalid resource filter"


# --- URLs and addresses ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddressPolicy(kit_addresses.AddressPolicy):
    """Which webhook URLs and addresses are allowed: the kit's address policy, and whether HTTPS is required.

    Attributes:
        require_https: Refuse ``http://`` URLs.
    """

    require_https: bool = True


@dataclass(frozen=True)
class WebhookTarget:
    """The parts of a webhook URL a delivery needs: scheme, host (a name or an address) and port."""

    url: str
    scheme: str
    host: str
    port: int
    address: IPAddress | None

    @property
    def needs_resolution(self) -> bool:
        """Whether the host is a name (its addresses are checked after resolving it)."""
        return self.address is None


def parse_webhook_url(url: str, policy: AddressPolicy) -> WebhookTarget:
    """Check a webhook URL's form and return its parts; an address given literally is checked at once.

    Raises:
        InvalidWebhookUrl: not an absolute http(s) URL with a host, or holding whitespace or control characters.
        WebhookUrlNotHttps: ``http://`` while HTTPS is required.
        WebhookUrlForbidden: the host is an address the policy refuses.
    """
    if len(url) > MAX_URL_LENGTH or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise InvalidWebhookUrl(
            f"the URL must be at most {MAX_URL_LENGTH} characters, without spaces or control characters"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidWebhookUrl(f"the URL cannot be parsed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise InvalidWebhookUrl("the URL must be absolute, http:// or https://, with a host")
    host = parts.hostname.rstrip(".")
    address: IPAddress | None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    target = WebhookTarget(
        url=url, scheme=scheme, host=host, port=port or (443 if scheme == "https" else 80), address=address
    )
    if address is not None:  # a forbidden address is the more important thing to say about a URL
        check_addresses(target, [address], policy)
    if scheme == "http" and policy.require_https:
        raise WebhookUrlNotHttps("webhook URLs must use https:// on this installation")
    return target


def check_addresses(target: WebhookTarget, addresses: Sequence[IPAddress], policy: AddressPolicy) -> None:
    """Check every address ``target``'s host resolves to: one refused address refuses the URL.

    Raises:
        WebhookUrlUnresolvable: no address at all.
        WebhookUrlForbidden: an address the policy refuses.
    """
    if not addresses:
        raise WebhookUrlUnresolvable(f"{target.host} does not resolve to any address")
    for address in addresses:
        if not policy.allows(address):
            raise WebhookUrlForbidden(
                f"{target.host} resolves to {address}, which is not a public address (loopback, link-local, "
                "private and reserved ranges are refused unless the operator allows them)"
            )


def check_event_types(values: Iterable[str]) -> list[str]:
    """Validate webhook event type filters; returns them sorted without repeats.

    Raises:
        UnknownEventType: naming the first unknown filter.
    """
    checked: set[str] = set()
    for value in values:
        try:
            checked.add(check_type_filter(value))
        except ValueError as exc:
            raise UnknownEventType(str(exc), errors=[{"loc": ["body", "event_types"], "msg": str(exc)}]) from None
    if len(checked) > MAX_TYPE_FILTERS:
        raise UnknownEventType(f"at most {MAX_TYPE_FILTERS} event type filters")
    return sorted(checked)


# --- retries and disabling -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How failed deliveries are retried: exponential back-off with jitter, for a retry window.

    Attributes:
        base: Delay before the second attempt.
        max_interval: Longest delay between attempts.
        window: How long after it was created a delivery is still tried.
    """

    base: timedelta = timedelta(seconds=5)
    max_interval: timedelta = timedelta(hours=1)
    window: timedelta = timedelta(hours=24)

    def delay(self, attempts: int, jitter: float) -> timedelta:
        """The wait after the ``attempts``-th failed attempt: ``base * 2^(attempts-1)``, capped, then jittered.

        Args:
            attempts: Attempts made so far (1 after the first).
            jitter: A number in [0, 1); the delay is spread over [half, all] of the nominal one, so receivers
                that failed together are not retried together.
        """
        exponent = min(max(attempts - 1, 0), 40)
        nominal = min(self.max_interval.total_seconds(), self.base.total_seconds() * (2**exponent))
        return timedelta(seconds=nominal / 2 + (nominal / 2) * min(max(jitter, 0.0), 1.0))

    def next_attempt(self, attempts: int, deadline: datetime, now: datetime, jitter: float) -> datetime | None:
        """When to try again after a failed attempt, or None when the retry window is over.

        The last attempt is made at the deadline rather than skipped when the back-off would pass it.
        """
        if now >= deadline:
            return None
        return min(now + self.delay(attempts, jitter), deadline)


@dataclass(frozen=True)
class Health:
    """A webhook's run of failures: how many attempts in a row failed and since when."""

    consecutive_failures: int = 0
    failing_since: datetime | None = None

    def failed(self, now: datetime) -> Health:
        """The health after another failed attempt."""
        return Health(self.consecutive_failures + 1, self.failing_since or now)

    @staticmethod
    def succeeded() -> Health:
        """The health after a successful attempt."""
        return Health()


@dataclass(frozen=True)
class DisablePolicy:
    """When a failing webhook is disabled: ``after_failures`` failed attempts in a row spanning ``after``."""

    after: timedelta = timedelta(hours=24)
    after_failures: int = 10

    def should_disable(self, health: Health, now: datetime) -> bool:
        """Whether a webhook in ``health`` is to be disabled now."""
        return (
            health.failing_since is not None
            and health.consecutive_failures >= self.after_failures
            and now - health.failing_since >= self.after
        )

    def reason(self, health: Health) -> str:
        """Why a webhook was disabled, for people."""
        since = health.failing_since.isoformat() if health.failing_since else "?"
        return f"{health.consecutive_failures} delivery attempts in a row failed since {since}"


def is_success(status_code: int) -> bool:
    """Whether a receiver's answer accepts the event (any 2xx; redirects are not followed)."""
    return 200 <= status_code < 300


def public_event_id(internal_message_id: UUID) -> UUID:
    """The id of the public event projected from the internal event ``internal_message_id``."""
    return uuid5(PUBLIC_EVENT_IDS, str(internal_message_id))
