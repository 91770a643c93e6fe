"""The permission matrix: what each role may do."""

from __future__ import annotations

import pytest

from stella.gateway.permissions import (
    ROLE_PERMISSIONS,
    Action,
    MatrixError,
    Resource,
    Role,
    parse_matrix,
    permission,
    permissions_for,
)

_DOMAIN = [
    r
    for r in Resource
    if r
    not in (
        Resource.PRINCIPAL,
        Resource.TOKEN,
        Resource.FREEZE,
        Resource.CREDENTIAL,
        Resource.TENANT,
        Resource.DEAD_LETTER,
        Resource.PLUGIN_CATALOGUE,
    )
]


def test_only_platform_admins_of_the_platform_tenant_manage_tenants() -> None:
    holders = [role for role, granted in ROLE_PERMISSIONS.items() if any(p.startswith("tenant:") for p in granted)]
    assert holders == [Role.PLATFORM_ADMIN]
    assert ROLE_PERMISSIONS[Role.PLATFORM_ADMIN] == {"tenant:read", "tenant:create", "plugin-catalogue:create"}
    assert permissions_for(["platform-admin"]) == frozenset()
    assert permissions_for(["platform-admin"], platform=True) == {
        "tenant:read",
        "tenant:create",
        "plugin-catalogue:create",
    }


def test_only_tenant_admins_may_name_a_registry_credential() -> None:
    needed = permission(Resource.CREDENTIAL, Action.UPDATE)
    assert [role for role, granted in ROLE_PERMISSIONS.items() if needed in granted] == [Role.TENANT_ADMIN]


def test_every_role_has_a_column() -> None:
    assert set(ROLE_PERMISSIONS) == set(Role)


def test_viewer_reads_every_domain_resource_and_changes_nothing() -> None:
    viewer = ROLE_PERMISSIONS[Role.VIEWER]
    assert viewer == {permission(r, Action.READ) for r in _DOMAIN}


def test_developer_builds_releases_and_requests_promotions_but_cannot_approve_or_promote() -> None:
    developer = permissions_for(["developer"])
    for action in (Action.READ, Action.CREATE, Action.UPDATE, Action.DELETE):
        assert permission(Resource.RELEASE, action) in developer
    assert "promotion:create" in developer
    assert "promotion:approve" not in developer
    assert "promotion:deploy" not in developer
    assert "environment:create" not in developer


def test_approve_promote_and_override_are_separate() -> None:
    approver = permissions_for(["approver"])
    operator = permissions_for(["operator"])
    assert "promotion:approve" in approver
    assert "promotion:deploy" not in approver
    assert "promotion:deploy" in operator
    assert "promotion:approve" not in operator
    assert "promotion:override" not in approver | operator
    assert "promotion:override" in permissions_for(["tenant-admin"])


def test_only_operators_and_tenant_admins_override_a_freeze_and_freeze_has_no_other_action() -> None:
    for role in Role:
        freeze = {p for p in ROLE_PERMISSIONS[role] if p.startswith("freeze:")}
        expected = {"freeze:override"} if role in (Role.OPERATOR, Role.TENANT_ADMIN) else set()
        assert freeze == expected, role
    assert permission(Resource.FREEZE, Action.OVERRIDE) == "freeze:override"


def test_only_operators_and_tenant_admins_read_and_replay_dead_letters() -> None:
    for role in Role:
        dead_letters = {p for p in ROLE_PERMISSIONS[role] if p.startswith("dead-letter:")}
        expected = {"dead-letter:read", "dead-letter:update"} if role in (Role.OPERATOR, Role.TENANT_ADMIN) else set()
        assert dead_letters == expected, role


def test_only_tenant_admins_manage_principals_and_tokens() -> None:
    for role in Role:
        granted = ROLE_PERMISSIONS[role]
        manages = {p for p in granted if p.startswith(("principal:", "token:"))}
        if role is Role.TENANT_ADMIN:
            assert manages == {
                permission(r, a)
                for r in (Resource.PRINCIPAL, Resource.TOKEN)
                for a in (Action.READ, Action.CREATE, Action.UPDATE, Action.DELETE)
            }
        else:
            assert manages == set(), role


def test_tenant_admin_has_every_action_on_every_domain_resource() -> None:
    admin = ROLE_PERMISSIONS[Role.TENANT_ADMIN]
    assert {permission(r, a) for r in _DOMAIN for a in Action} <= admin


def test_roles_add_up_and_unknown_roles_grant_nothing() -> None:
    both = permissions_for(["developer", "approver"])
    assert both == ROLE_PERMISSIONS[Role.DEVELOPER] | ROLE_PERMISSIONS[Role.APPROVER]
    assert permissions_for(["root", "admin"]) == frozenset()
    assert permissions_for([]) == frozenset()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("resource | viewer | wizard\nrelease | r | r", "unknown role"),
        ("resource | viewer\nrelease | x", "unknown action letter"),
        ("resource | viewer\nrelese | r", "unknown resource"),
        ("resource | viewer\nrelease | r | r", "cells"),
        ("resource | viewer\nrelease | r\nrelease | r", "twice"),
        ("resource | viewer\nrelease | r", "without a row"),
    ],
)
def test_a_malformed_table_is_refused(table: str, message: str) -> None:
    with pytest.raises(MatrixError, match=message):
        parse_matrix(table)
