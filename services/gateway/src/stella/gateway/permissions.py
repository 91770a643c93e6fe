"""Roles and the permissions they grant: one table, read once at import.

A permission is ``{resource}:{action}``. Components and their versions are part of the release resource, so
their routes check ``release:*`` permissions. Approving (``promotion:approve``), promoting
(``promotion:deploy``) and overriding a freeze window (``freeze:override``) are separate permissions, so no
role gets one by accident with another. ``freeze`` is a resource of its own for that one action: the windows
themselves are managed through the environment (``environment:update``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Final


class Resource(StrEnum):
    """What a permission is about (reference §8). Components and versions belong to ``release``.

    ``freeze`` has only the ``override`` action: letting a promotion through a freeze window. ``credential``
    has only ``update``: naming (or removing) a component's registry credential reference.
    ``dead-letter`` is the messages the services gave up on: read them, and replay them (``update``).
    ``plugin`` is a tenant's plugin instances (and reading the installed plugins); ``plugin-catalogue`` has only
    ``create``: installing a plugin on the server, for every tenant to pick from.
    """

    ENVIRONMENT = "environment"
    RELEASE = "release"
    PROMOTION = "promotion"
    TARGET = "target"
    AGENT = "agent"
    WORKFLOW = "workflow"
    PLUGIN = "plugin"
    PLUGIN_CATALOGUE = "plugin-catalogue"
    INTEGRATION = "integration"
    EVIDENCE = "evidence"
    PRINCIPAL = "principal"
    TOKEN = "token"
    FREEZE = "freeze"
    DEAD_LETTER = "dead-letter"
    CREDENTIAL = "credential"
    TENANT = "tenant"


class Action(StrEnum):
    """What may be done to a resource."""

    READ = "read"
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    APPROVE = "approve"
    DEPLOY = "deploy"
    OVERRIDE = "override"


class Role(StrEnum):
    """The roles a principal can be bound to in its tenant."""

    VIEWER = "viewer"
    DEVELOPER = "developer"
    APPROVER = "approver"
    OPERATOR = "operator"
    TENANT_ADMIN = "tenant-admin"
    PLATFORM_ADMIN = "platform-admin"


ACTION_LETTERS: Final[Mapping[str, Action]] = {
    "r": Action.READ,
    "c": Action.CREATE,
    "u": Action.UPDATE,
    "d": Action.DELETE,
    "a": Action.APPROVE,
    "p": Action.DEPLOY,
    "o": Action.OVERRIDE,
}
"""Letters of :data:`MATRIX`: r read, c create, u update, d delete, a approve, p deploy (promote), o override."""

MATRIX: Final[str] = """
resource     | viewer | developer | approver | operator | tenant-admin | platform-admin
environment  | r      | r         | r        | rcud     | rcudapo      | -
release      | r      | rcud      | r        | rcud     | rcudapo      | -
promotion    | r      | rc        | ra       | rcup     | rcudapo      | -
target       | r      | r         | r        | rcud     | rcudapo      | -
agent        | r      | r         | r        | rcud     | rcudapo      | -
workflow     | r      | rcu       | r        | rcud     | rcudapo      | -
plugin       | r      | r         | r        | rcud     | rcudapo      | -
plugin-catalogue | -  | -         | -        | -        | -            | c
integration  | r      | r         | r        | rcud     | rcudapo      | -
evidence     | r      | r         | r        | r        | rcudapo      | -
principal    | -      | -         | -        | -        | rcud         | -
token        | -      | -         | -        | -        | rcud         | -
freeze       | -      | -         | -        | o        | o            | -
dead-letter  | -      | -         | -        | ru       | ru           | -
credential   | -      | -         | -        | -        | u            | -
tenant       | -      | -         | -        | -        | -            | rc
"""
"""The permission matrix: which actions (letters of :data:`ACTION_LETTERS`) each role has on each resource.

Roles add up: a principal bound to developer and approver has the union of both columns. ``-`` is nothing.
Only a tenant admin manages principals and tokens, and only a tenant admin names the credential reference a
component's registry is read with (``credential:update``): the reference names a secret on the release
service's host, so it is not part of editing a component (``release:update``). Operators and tenant admins
hold ``freeze:override``; anyone else passes a freeze window only when the window lists them as an exception.
Operators and tenant admins read and replay their tenant's dead letters. ``platform-admin`` is the operator's
role: it creates and reads tenants (``/api/v1/tenants``) and nothing inside them, and only principals of the
platform tenant hold it; besides tenants, it installs plugins on the server (``plugin-catalogue:create``), which
tenants then enable for themselves as plugin instances (``plugin:*``).
"""


class MatrixError(ValueError):
    """The permission table is malformed (caught by the unit tests, never at run time)."""


def parse_matrix(table: str) -> dict[Role, frozenset[str]]:
    """Turn a table shaped like :data:`MATRIX` into the permissions of each role.

    Args:
        table: Header row ``resource | <role> | ...`` then one row per resource.

    Returns:
        For each role, its permissions as ``{resource}:{action}`` strings.

    Raises:
        MatrixError: on an unknown role, resource or letter, a repeated row, or a missing resource.
    """
    lines = [line for line in table.strip().splitlines() if line.strip()]
    header = [cell.strip() for cell in lines[0].split("|")]
    try:
        roles = [Role(cell) for cell in header[1:]]
    except ValueError as exc:
        raise MatrixError(f"unknown role in header: {exc}") from exc
    granted: dict[Role, set[str]] = {role: set() for role in roles}
    seen: set[Resource] = set()
    for line in lines[1:]:
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) != len(header):
            raise MatrixError(f"row {line!r} has {len(cells)} cells, the header {len(header)}")
        try:
            resource = Resource(cells[0])
        except ValueError as exc:
            raise MatrixError(f"unknown resource {cells[0]!r}") from exc
        if resource in seen:
            raise MatrixError(f"resource {resource} appears twice")
        seen.add(resource)
        for role, letters in zip(roles, cells[1:], strict=True):
            if letters == "-":
                continue
            for letter in letters:
                action = ACTION_LETTERS.get(letter)
                if action is None:
                    raise MatrixError(f"unknown action letter {letter!r} for {resource}/{role}")
                granted[role].add(permission(resource, action))
    missing = set(Resource) - seen
    if missing:
        raise MatrixError(f"resources without a row: {sorted(missing)}")
    return {role: frozenset(perms) for role, perms in granted.items()}


def permission(resource: Resource, action: Action) -> str:
    """Return the permission string ``{resource}:{action}``."""
    return f"{resource.value}:{action.value}"


ROLE_PERMISSIONS: Final[Mapping[Role, frozenset[str]]] = parse_matrix(MATRIX)
"""Permissions of each role, from :data:`MATRIX`."""


TENANT_ROLES: Final[frozenset[Role]] = frozenset(set(Role) - {Role.PLATFORM_ADMIN})
"""The roles a principal of an ordinary tenant may hold; platform-admin belongs to the platform tenant only."""


def permissions_for(roles: Iterable[str], *, platform: bool = False) -> frozenset[str]:
    """Return the union of the permissions of ``roles``; names that are not roles grant nothing.

    Args:
        roles: Role names as stored in role bindings.
        platform: Whether the principal belongs to the platform tenant; platform-admin grants nothing
            anywhere else, whatever a role binding says.
    """
    granted: set[str] = set()
    for name in roles:
        try:
            role = Role(name)
        except ValueError:
            continue
        if role is Role.PLATFORM_ADMIN and not platform:
            continue
        granted |= ROLE_PERMISSIONS[role]
    return frozenset(granted)
