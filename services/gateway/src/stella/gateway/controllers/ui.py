"""``/ui``: the web dashboard, server-rendered HTML served by the gateway itself (no CDN, one small script).

Sign-in takes an API token and opens a server-side session bound to it; the ``HttpOnly``, ``SameSite=Strict``
cookie (``Secure`` when the request came over HTTPS) holds only the session's random secret. Every page
authenticates the session as the API authenticates the token (revoking the token ends its sessions), and
signing out ends the session on the server, so a copied cookie stops working at once. Pages read through the same relay, contracts and permissions as the API routes: nothing reaches a
service around the gateway, and another tenant's object is a 404 here as there.

Every form that changes something carries a CSRF token: an HMAC of the session secret, which a page of
another site can neither read nor compute. The sign-in form, which has no session yet, is bound to a random
value kept in a short-lived cookie of its own. Every answer carries a strict Content-Security-Policy that
allows only the gateway's own script (``static/ui/live.js``, served under a versioned name): it keeps a running
deployment's page current from the tenant's event stream; without it the page refreshes itself instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from enum import Enum
from functools import cache
from html import escape
from pathlib import Path
from typing import Annotated, Any, Final, TypeVar
from urllib.parse import parse_qs, urlencode
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import Parameter, QueryParameter
from litestar.response import Redirect, Stream

from stella.contracts import approval as approvals
from stella.contracts import deployment as deployments
from stella.contracts import evidence, release, workflow
from stella.contracts import promotion as contract
from stella.contracts.agent import AgentStatus
from stella.contracts.envelope import PageRequest
from stella.contracts.promotion import PromotionStatus, PromotionView
from stella.gateway.auth import Identity, hash_token, new_session_secret
from stella.gateway.controllers.events import checked_resource
from stella.gateway.controllers.evidence import export_stream
from stella.gateway.controllers.promotions import cast_vote
from stella.gateway.dependencies import parse_id
from stella.gateway.deployment_schemas import AgentPage, JobOut, JobPage, TargetOut, TargetPage
from stella.gateway.pagination import page_params
from stella.gateway.permissions import Action, Resource
from stella.gateway.problems import ProblemError
from stella.gateway.relay import CallContext, Relay, parse_data
from stella.gateway.runtime import Runtime
from stella.gateway.schemas import (
    ApprovalRequestOut,
    EnvironmentBoardOut,
    EnvironmentOut,
    EnvironmentPage,
    FreezeWindowOut,
    PacketPage,
    PacketType,
    PromotionCellOut,
    PromotionPage,
    ReleaseOut,
    ReleasePage,
    ReleaseStatus,
    VerificationOut,
    VoteAction,
)
from stella.gateway.streams import MEDIA_TYPE, StreamFilter, parse_last_event_id
from stella.gateway.tracing import trace_id

E = TypeVar("E", bound=Enum)

UI_PREFIX: Final[str] = "/ui"
"""Where the dashboard is served."""

SESSION_COOKIE: Final[str] = "stella_session"
"""The cookie holding the dashboard session's secret (never the API token)."""

SIGN_IN_COOKIE: Final[str] = "stella_sign_in"
"""The cookie binding the sign-in form to the browser that loaded it (login CSRF)."""

CSRF_FIELD: Final[str] = "csrf_token"
"""Name of the hidden field carrying the CSRF token of a form."""

CSP: Final[str] = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""The dashboard's Content-Security-Policy: only the gateway's own script (no inline script), nothing from
elsewhere, not framed."""

SECURITY_HEADERS: Final[dict[str, str]] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
"""Headers of every dashboard answer."""

_ID = Parameter(description="Promotion id")
_PACKET_ID = Parameter(description="Evidence packet id")
_RELEASE_ID = Parameter(description="Release id")
_MAX_FORM_BYTES: Final[int] = 8192
_MATRIX_PAGE: Final[int] = 500
_MATRIX_RELEASES: Final[int] = 200
_SIGN_IN_TTL_S: Final[int] = 600

SESSION_TTL_S: Final[int] = 12 * 3600
"""A dashboard session lasts this long at most (and never beyond its token's expiry)."""

STYLE: Final[str] = """
body{font-family:system-ui,sans-serif;margin:0;color:#111;background:#fff}
header{display:flex;gap:1rem;align-items:center;padding:.5rem 1rem;background:#13315c;color:#fff;flex-wrap:wrap}
header a{color:#fff}main{padding:1rem;max-width:100%;overflow-x:auto}
a:focus,button:focus,input:focus{outline:3px solid #f59e0b;outline-offset:2px}
table{border-collapse:collapse}th,td{border:1px solid #999;padding:.3rem .5rem;text-align:left}
.message{padding:.5rem 1rem;border:2px solid #b91c1c;background:#fee2e2;color:#7f1d1d}
.closed{color:#7f1d1d;font-weight:bold}.open{color:#14532d}
button{font:inherit;padding:.3rem .8rem}label{display:block;margin:.5rem 0 .2rem}
select:focus,summary:focus{outline:3px solid #f59e0b;outline-offset:2px}
form.filters{display:flex;gap:1rem;flex-wrap:wrap;align-items:flex-end;margin-bottom:1rem}
form.filters label{margin:0}pre{white-space:pre-wrap;max-width:60rem}code{word-break:break-all}
nav a{margin-right:.6rem}.muted{color:#444}
"""
"""The dashboard's one stylesheet (served from /ui/style.css so the CSP can forbid inline styles)."""


def csrf_for(token: str) -> str:
    """The CSRF token of a session: an HMAC of its secret (stable for the session, unguessable)."""
    return hmac.new(token.encode(), b"stella-ui-csrf", hashlib.sha256).hexdigest()


def _secure(request: Request[Any, Any, Any]) -> bool:
    return request.url.scheme == "https"


NAV: Final[tuple[tuple[str, str], ...]] = (
    ("", "Overview"),
    ("/releases", "Releases"),
    ("/promotions", "Promotions"),
    ("/approvals", "Approvals"),
    ("/deployments", "Deployments"),
    ("/agents", "Agents"),
    ("/freeze", "Freeze calendar"),
    ("/evidence", "Evidence"),
)
"""The dashboard's pages, in the order of its navigation."""


def _page(
    title: str, body: str, *, identity: Identity | None = None, status: int = 200, head: str = ""
) -> Response[str]:
    nav = ""
    if identity is not None:
        links = " ".join(f'<a href="{UI_PREFIX}{path}">{name}</a>' for path, name in NAV)
        nav = (
            f'<nav aria-label="Main">{links}</nav>'
            f"<span>{escape(identity.principal_name)}</span>"
            f'<form method="post" action="{UI_PREFIX}/sign-out">{{csrf}}<button type="submit">Sign out</button></form>'
        )
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{head}<title>{escape(title)} · Stella</title>"
        f'<link rel="stylesheet" href="{UI_PREFIX}/style.css"></head><body>'
        f"<header><strong>Stella</strong>{nav}</header>"
        f'<main id="main"><h1>{escape(title)}</h1>{body}</main></body></html>'
    )
    return Response(html, status_code=status, media_type="text/html", headers=dict(SECURITY_HEADERS))


def _message(problem: ProblemError) -> str:
    return f'<p class="message" role="alert">{escape(problem.detail)} <small>({escape(problem.code)})</small></p>'


async def _form(request: Request[Any, Any, Any]) -> dict[str, str]:
    body = await request.body()
    if len(body) > _MAX_FORM_BYTES:
        raise ProblemError(413, "VAL_BODY_TOO_LARGE", "The form is too large.")
    try:
        parsed = parse_qs(body.decode(), keep_blank_values=True, strict_parsing=False, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise ProblemError(400, "VAL_INVALID_REQUEST", "The form is not valid.") from None
    return {name: values[0] for name, values in parsed.items() if len(values) == 1}


def _check_csrf(expected: str, form: Mapping[str, str]) -> None:
    given = form.get(CSRF_FIELD, "")
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise ProblemError(403, "AUTH_CSRF_INVALID", "The form's CSRF token is missing or wrong: reload the page.")


class Session:
    """A signed-in request: who it is, how to reach the services, and the form token of its pages."""

    def __init__(self, request: Request[Any, Any, Any], identity: Identity, token: str, relay: Relay) -> None:
        self.identity = identity
        self.csrf = csrf_for(token)
        self.call = CallContext(identity=identity, correlation_id=trace_id(request.scope))
        self.relay = relay

    def require(self, resource: Resource, action: Action) -> None:
        """Refuse (403) what the principal's roles do not allow, as the API routes do."""
        if not self.identity.can(resource, action):
            raise ProblemError(
                403, "PERM_DENIED", f"This needs the permission '{resource.value}:{action.value}'.", title="Forbidden"
            )

    def page(self, title: str, body: str, status: int = 200, head: str = "") -> Response[str]:
        """A page of this session (its sign-out form carries the CSRF token)."""
        response = _page(title, body, identity=self.identity, status=status, head=head)
        hidden = f'<input type="hidden" name="{CSRF_FIELD}" value="{self.csrf}">'
        response.content = str(response.content).replace("{csrf}", hidden)
        return response


async def _session(request: Request[Any, Any, Any], runtime: Runtime) -> Session | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        identity = await runtime.get_authenticator().authenticate_session(token)
    except ProblemError as exc:
        if exc.status == 401:
            return None
        raise
    return Session(request, identity, token, runtime.get_relay())


class SignInRequired(Exception):
    """A page was asked for without a live session: the answer is the sign-in page."""


async def _signed_in(request: Request[Any, Any, Any], runtime: Runtime, *required: tuple[Resource, Action]) -> Session:
    """The request's session, allowed each of ``required`` (403 otherwise).

    Raises:
        SignInRequired: without a live session (the controller answers with the sign-in page).
    """
    session = await _session(request, runtime)
    if session is None:
        raise SignInRequired
    for resource, action in required:
        session.require(resource, action)
    return session


async def _signed_form(request: Request[Any, Any, Any], runtime: Runtime) -> tuple[Session, dict[str, str]]:
    """The session of a posted form and the form, its CSRF token checked."""
    session = await _signed_in(request, runtime)
    form = await _form(request)
    _check_csrf(session.csrf, form)
    return session, form


def _to_sign_in(*_: Any) -> Response[Any]:
    response: Response[Any] = Redirect(f"{UI_PREFIX}/sign-in", status_code=303)
    response.headers.update(SECURITY_HEADERS)
    response.delete_cookie(SESSION_COOKIE, path=UI_PREFIX)
    return response


def _age(now: datetime, then: datetime) -> str:
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _table(caption: str, head: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    header = "".join(f'<th scope="col">{cell}</th>' for cell in head)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><caption>{escape(caption)}</caption><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def _vote_forms(session: Session, promotion_id: UUID) -> str:
    hidden = f'<input type="hidden" name="{CSRF_FIELD}" value="{session.csrf}">'
    comment = f"comment-{promotion_id}"
    return (
        f'<form method="post" action="{UI_PREFIX}/promotions/{promotion_id}/vote">{hidden}'
        f'<label for="{comment}">Comment</label>'
        f'<input id="{comment}" name="comment" maxlength="2000" size="40"> '
        '<button type="submit" name="action" value="approved">Approve</button> '
        '<button type="submit" name="action" value="rejected">Reject</button></form>'
    )


def ui_problem(_: Request[Any, Any, Any], exc: ProblemError) -> Response[str]:
    """A problem on a dashboard page, shown as a page saying what happened (same status as the API's)."""
    return _page(exc.title, _message(exc) + f'<p><a href="{UI_PREFIX}">Back to the overview</a></p>', status=exc.status)


_ACTIVE_JOB: Final[frozenset[str]] = frozenset({"pending", "running", "paused", "rolling_back"})
"""Job states that still change: their page follows them live."""

_UNDECIDED: Final[frozenset[str]] = frozenset(
    {
        PromotionStatus.PENDING_GATE.value,
        PromotionStatus.PENDING_APPROVAL.value,
        PromotionStatus.APPROVED.value,
        PromotionStatus.DEPLOYING.value,
    }
)
"""Promotion states from which a deployment may still start."""

REFRESH_S: Final[int] = 3
"""Seconds between two loads of a live deployment page in a browser without script (a meta refresh)."""

_LIST_PAGE: Final[int] = 50
_TASK_PAGE: Final[int] = 200
_MAX_NAME_FILTER: Final[int] = 63


def _see_other(path: str) -> Response[Any]:
    """After a form's change: the page to show next (303, so a reload does not post again)."""
    response: Response[Any] = Redirect(path, status_code=303)
    response.headers.update(SECURITY_HEADERS)
    return response


SCRIPT: Final[Path] = Path(__file__).parent.parent / "static" / "ui" / "live.js"
"""The dashboard's one script: live parts of pages follow the event stream (see its header)."""


@cache
def _script_asset() -> tuple[str, bytes]:
    """The script's versioned name (its content hash: a new version is a new URL) and its bytes."""
    content = SCRIPT.read_bytes()
    return f"live.{hashlib.sha256(content).hexdigest()[:16]}.js", content


def _script() -> str:
    name, _ = _script_asset()
    return f'<script src="{UI_PREFIX}/assets/{name}" defer></script>'


def _hidden(session: Session) -> str:
    return f'<input type="hidden" name="{CSRF_FIELD}" value="{session.csrf}">'


def _when(value: datetime | None, zone: ZoneInfo | None = None) -> str:
    if value is None:
        return "-"
    if zone is not None:
        value = value.astimezone(zone)
    return escape(value.isoformat(timespec="seconds"))


def _link(path: str, text: str) -> str:
    return f'<a href="{UI_PREFIX}{escape(path)}">{escape(text)}</a>'


def _pager(path: str, params: Mapping[str, str | None], next_token: str | None) -> str:
    if not next_token:
        return ""
    query = urlencode({name: value for name, value in {**params, "page_token": next_token}.items() if value})
    return f'<p><a href="{UI_PREFIX}{path}?{escape(query)}" rel="next">Next page</a></p>'


def _select(name: str, label: str, options: Iterable[tuple[str, str]], selected: str | None) -> str:
    choices = ['<option value="">Any</option>']
    for value, text in options:
        chosen = " selected" if value == selected else ""
        choices.append(f'<option value="{escape(value)}"{chosen}>{escape(text)}</option>')
    return f'<label for="{name}">{escape(label)}</label><select id="{name}" name="{name}">{"".join(choices)}</select>'


def _filters(path: str, fields: str) -> str:
    return (
        f'<form class="filters" method="get" action="{UI_PREFIX}{path}" role="search" aria-label="Filters">'
        f'{fields}<button type="submit">Filter</button> <a href="{UI_PREFIX}{path}">Clear</a></form>'
    )


def _listing(
    path: str,
    filters: str,
    params: Mapping[str, str | None],
    *,
    caption: str,
    head: Iterable[str],
    rows: Sequence[Sequence[str]],
    next_token: str | None,
    empty: str,
) -> str:
    """The body of a list page: its filter form, then its table and "Next page" link, or what to do when
    nothing matches.

    Args:
        path: The page's path under the dashboard (``/releases``): where the filters and the next page go.
        filters: The filter form's fields (labels and inputs; :func:`_select` builds a choice).
        params: The filters' current values, carried to the next page.
        caption: The table's caption (its accessible name).
        head: The column headings.
        rows: The rows of this page, cells as HTML.
        next_token: The next page's token (None on the last page).
        empty: What the page says when no row matches (plain text).
    """
    form = _filters(path, filters)
    if not rows:
        return f"{form}<p>{escape(empty)}</p>"
    return form + _table(caption, head, rows) + _pager(path, params, next_token)


def _list_page(page_token: str | None) -> PageRequest:
    """The page of a list (its ``page_token`` checked as the API checks it)."""
    return page_params(page_size=_LIST_PAGE, page_token=page_token or None).to_contract()


def _choice(kind: type[E], value: str | None, name: str) -> E | None:
    """A filter's value among ``kind``'s; a value outside them is a 400."""
    if not value:
        return None
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise ProblemError(400, "VAL_INVALID_REQUEST", f"{name} must be one of: {allowed}.") from None


def _path_id(value: str, what: str) -> UUID:
    """An object id of a page URL; a malformed one names nothing, so it is a 404 as an unknown one is."""
    try:
        return UUID(value)
    except ValueError:
        raise ProblemError(404, "RES_NOT_FOUND", f"No such {what}.") from None


def _digests(components: Iterable[Mapping[str, Any]]) -> str:
    return "<br>".join(
        f"{escape(str(item.get('name') or item.get('component') or ''))}: "
        f"<code>{escape(str(item.get('digest', '')))}</code>"
        for item in components
    )


def _facts(facts: Iterable[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts) + "</dl>"


def _next_environments(environments: list[EnvironmentOut], reached: set[UUID]) -> list[EnvironmentOut]:
    """Where a release may go next: the first environments, or those right after the furthest it reached."""
    if not environments:
        return []
    furthest = max((e.order_index for e in environments if e.id in reached), default=None)
    later = [e.order_index for e in environments if furthest is None or e.order_index > furthest]
    if not later:
        return []
    step = min(later)
    return [e for e in environments if e.order_index == step]


def _window(window: FreezeWindowOut, zone: ZoneInfo) -> str:
    if window.rrule:
        hours = (window.duration_s or 0) / 3600
        first = f" from {escape(window.dtstart.isoformat())}" if window.dtstart else ""
        return f"<code>{escape(window.rrule)}</code>{first}, {hours:g} h each ({escape(window.timezone)})"
    return f"{_when(window.start, zone)} to {_when(window.end, zone)}"


def _drift(target: TargetOut) -> str:
    if not target.drift_detected:
        return "in sync" if target.last_drift else "not checked yet"
    differences = (target.last_drift or {}).get("differences") or []
    lines = [
        f"{escape(str(d.get('component', '')))}: expected <code>{escape(str(d.get('expected')))}</code>, "
        f"actual <code>{escape(str(d.get('actual')))}</code>"
        for d in differences
        if isinstance(d, dict)
    ]
    return '<strong class="closed">drifted</strong><br>' + "<br>".join(lines)


def _date(value: str | None, name: str, *, end: bool = False) -> datetime | None:
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise ProblemError(400, "VAL_INVALID_REQUEST", f"{name} must be a date, e.g. 2026-01-31.") from None
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start + timedelta(days=1) if end else start


class DashboardController(Controller):
    """The dashboard's pages; they authenticate from the session cookie, not from a bearer token."""

    path = UI_PREFIX
    include_in_schema = False
    opt = {"exclude_from_auth": True}
    exception_handlers = {ProblemError: ui_problem, SignInRequired: _to_sign_in}

    @get("/style.css", media_type="text/css")
    async def style(self) -> Response[str]:
        """The stylesheet."""
        return Response(STYLE, media_type="text/css", headers={"Cache-Control": "max-age=3600"})

    @get("/assets/{name:str}", media_type="text/javascript")
    async def asset(self, name: str = Parameter(description="Versioned asset name")) -> Response[bytes]:
        """The dashboard's script under its versioned name, cached for good (any other name is a 404)."""
        current, content = _script_asset()
        if name != current:
            raise ProblemError(404, "RES_NOT_FOUND", "No such asset.")
        return Response(
            content,
            media_type="text/javascript",
            headers={**SECURITY_HEADERS, "Cache-Control": "public, max-age=31536000, immutable"},
        )

    @get("/sign-in")
    async def sign_in_form(self, request: Request[Any, Any, Any]) -> Response[str]:
        """The sign-in form (an API token)."""
        return self._sign_in_page(request)

    def _sign_in_page(self, request: Request[Any, Any, Any], error: str = "", status: int = 200) -> Response[str]:
        nonce = secrets.token_urlsafe(24)
        body = (
            f'{error}<form method="post" action="{UI_PREFIX}/sign-in">'
            f'<input type="hidden" name="{CSRF_FIELD}" value="{nonce}">'
            '<label for="token">API token</label>'
            '<input id="token" name="token" type="password" autocomplete="off" required size="50">'
            ' <button type="submit">Sign in</button></form>'
            "<p>Ask a tenant admin for a token (POST /api/v1/tokens), or use the one `make run` printed.</p>"
        )
        response = _page("Sign in", body, status=status)
        response.set_cookie(
            SIGN_IN_COOKIE,
            nonce,
            path=f"{UI_PREFIX}/sign-in",
            max_age=_SIGN_IN_TTL_S,
            httponly=True,
            samesite="strict",
            secure=_secure(request),
        )
        return response

    @post("/sign-in", status_code=303)
    async def sign_in(self, request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]) -> Response[Any]:
        """Check the token and keep it in the session cookie."""
        form = await _form(request)
        _check_csrf(request.cookies.get(SIGN_IN_COOKIE, ""), form)
        token = form.get("token", "").strip()
        try:
            identity = await runtime.get_authenticator().authenticate(f"Bearer {token}")
        except ProblemError as exc:
            if exc.status != 401:
                raise
            return self._sign_in_page(request, _message(exc), status=401)
        secret = new_session_secret()
        now = runtime.clock()
        expires_at = now + timedelta(seconds=SESSION_TTL_S)
        if identity.expires_at is not None:
            expires_at = min(expires_at, identity.expires_at)
        await runtime.get_store().create_session(
            hash_token(secret), identity.tenant_id, identity.token_id, now=now, expires_at=expires_at
        )
        response: Response[Any] = Redirect(UI_PREFIX, status_code=303)
        response.headers.update(SECURITY_HEADERS)
        response.set_cookie(
            SESSION_COOKIE, secret, path=UI_PREFIX, httponly=True, samesite="strict", secure=_secure(request)
        )
        response.delete_cookie(SIGN_IN_COOKIE, path=f"{UI_PREFIX}/sign-in")
        return response

    @post("/sign-out", status_code=303)
    async def sign_out(self, request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]) -> Response[Any]:
        """End the session on the server (its cookie no longer signs anyone in) and forget the cookie."""
        await _signed_form(request, runtime)
        await runtime.get_store().end_session(hash_token(request.cookies[SESSION_COOKIE]), runtime.clock())
        return _to_sign_in()

    @get("/")
    async def overview(self, request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]) -> Response[Any]:
        """Environments in promotion order by releases: where each release is, its status and age, freezes."""
        session = await _signed_in(
            request, runtime, (Resource.ENVIRONMENT, Action.READ), (Resource.PROMOTION, Action.READ)
        )
        board = await self._board(session, releases=_MATRIX_RELEASES)
        if not board.environments:
            return session.page("Overview", "<p>No environments yet: create them with POST /api/v1/environments.</p>")
        now = runtime.clock()
        # Newest release first; one cell per (release, environment): its latest promotion.
        cells: dict[tuple[UUID, UUID], PromotionCellOut] = {}
        releases: dict[UUID, str] = {}
        for item in board.cells:
            releases.setdefault(item.release_id, item.release_name)
            cells[(item.release_id, item.environment_id)] = item
        environments = [entry.environment for entry in board.environments]
        head = ["Release"]
        for entry in board.environments:
            environment, state = entry.environment, entry.state
            freeze = '<span class="open">open</span>'
            if state.closed:
                until = f" until {state.next_open.isoformat()}" if state.next_open else ""
                freeze = f'<span class="closed">frozen{escape(until)}</span>'
            head.append(f"{escape(environment.name)}<br>{freeze}")
        rows = []
        for release_id, release_name in releases.items():
            row = [escape(release_name)]
            for environment in environments:
                cell = cells.get((release_id, environment.id))
                if cell is None:
                    row.append("")
                    continue
                row.append(
                    f'<a href="{UI_PREFIX}/promotions/{cell.promotion_id}">{escape(cell.status)}</a>'
                    f" <small>{_age(now, cell.updated_at)}</small>"
                )
            rows.append(row)
        body = "" if rows else "<p>No promotions yet: promote a release with POST /api/v1/promotions.</p>"
        return session.page("Overview", body + _table("Releases by environment", head, rows))

    @get("/approvals")
    async def approvals(self, request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]) -> Response[Any]:
        """The approvals inbox: promotions waiting for approvals, with approve and reject."""
        session = await _signed_in(request, runtime)
        return await self._inbox(session)

    async def _inbox(self, session: Session, message: str = "", status: int = 200) -> Response[str]:
        session.require(Resource.PROMOTION, Action.READ)
        query = session.call.query(
            contract.ListPromotions,
            status=PromotionStatus.PENDING_APPROVAL,
            page=PageRequest(page_size=_MATRIX_PAGE),
        )
        waiting = parse_data(PromotionPage, await session.relay.query(contract.LIST_PROMOTIONS, query)).items
        if not waiting:
            return session.page("Approvals", f"{message}<p>Nothing waits for an approval.</p>", status=status)
        may_vote = session.identity.can(Resource.PROMOTION, Action.APPROVE)
        rows = [
            [
                f'<a href="{UI_PREFIX}/promotions/{promotion.id}">{escape(promotion.release_name)}</a>',
                escape(promotion.target_environment_name),
                escape(promotion.status_message or promotion.reason),
                _vote_forms(session, promotion.id) if may_vote else "Your roles cannot approve.",
            ]
            for promotion in waiting
        ]
        table = _table("Promotions waiting for approvals", ["Release", "Environment", "Waiting for", "Vote"], rows)
        return session.page("Approvals", message + table, status=status)

    @post("/promotions/{promotion_id:str}/vote", status_code=303)
    async def vote(
        self, request: Request[Any, Any, Any], runtime: NamedDependency[Runtime], promotion_id: str = _ID
    ) -> Response[Any]:
        """Approve or reject a promotion; a refusal (separation of duties...) is shown on the inbox."""
        session, form = await _signed_form(request, runtime)
        session.require(Resource.PROMOTION, Action.APPROVE)
        try:
            action = VoteAction(form.get("action", ""))
        except ValueError:
            raise ProblemError(400, "VAL_INVALID_REQUEST", "Choose Approve or Reject.") from None
        comment = form.get("comment", "")
        if len(comment) > 2000:
            raise ProblemError(400, "VAL_INVALID_REQUEST", "The comment is longer than 2000 characters.")
        try:
            await cast_vote(session.call, session.relay, promotion_id, action, comment)
        except ProblemError as exc:
            if exc.status not in (409, 422):
                raise
            return await self._inbox(session, _message(exc), status=exc.status)
        response: Response[Any] = Redirect(f"{UI_PREFIX}/approvals", status_code=303)
        response.headers.update(SECURITY_HEADERS)
        return response

    async def _evidence(self, session: Session, promotion_id: UUID) -> str:
        query = session.call.query(
            evidence.ListPackets, promotion_id=promotion_id, page=PageRequest(page_size=_MATRIX_PAGE)
        )
        packets = parse_data(PacketPage, await session.relay.query(evidence.LIST_PACKETS, query)).items
        if not packets:
            return "<p>No evidence yet: a packet is signed once the promotion is decided.</p>"
        rows = [
            [
                escape(packet.packet_type),
                str(packet.sequence),
                f"<code>{escape(packet.content_hash)}</code>",
                _when(packet.created_at),
                f'<a href="{UI_PREFIX}/evidence/{packet.id}">Verify</a>',
            ]
            for packet in packets
        ]
        return _table("Evidence", ["Packet", "Chain position", "Content hash", "Signed", "Check"], rows)

    @get("/evidence/{packet_id:str}")
    async def verify_evidence(
        self, request: Request[Any, Any, Any], runtime: NamedDependency[Runtime], packet_id: str = _PACKET_ID
    ) -> Response[Any]:
        """Verify an evidence packet (signature, content hash, chain link) and show each check."""
        session = await _signed_in(request, runtime, (Resource.EVIDENCE, Action.READ))
        query = session.call.query(evidence.VerifyPacket, packet_id=parse_id(packet_id, "packet_id"))
        result = parse_data(VerificationOut, await session.relay.query(evidence.VERIFY_PACKET, query))
        verdict = (
            '<p class="open" role="status">Verified: every check holds.</p>'
            if result.valid
            else '<p class="message" role="alert">Not valid: see the failed checks.</p>'
        )
        rows = [[escape(name), "holds" if held else "FAILS"] for name, held in sorted(result.checks.items())]
        findings = "".join(f"<li>{escape(finding)}</li>" for finding in result.findings)
        body = verdict + _table("Checks", ["Check", "Result"], rows) + (f"<ul>{findings}</ul>" if findings else "")
        return session.page("Evidence packet", body)

    async def _board(self, session: Session, *, releases: int = 0, windows: bool = False) -> EnvironmentBoardOut:
        """Every environment with its freeze state (and windows), and the newest releases' cells: one query."""
        query = session.call.query(contract.GetEnvironmentBoard, releases=releases, include_windows=windows)
        return parse_data(EnvironmentBoardOut, await session.relay.query(contract.GET_ENVIRONMENT_BOARD, query))

    # --- releases -----------------------------------------------------------------------------------

    @get("/releases")
    async def releases(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        name: Annotated[str | None, QueryParameter()] = None,
        status: Annotated[str | None, QueryParameter()] = None,
        page_token: Annotated[str | None, QueryParameter()] = None,
    ) -> Response[Any]:
        """Releases, newest first, filtered by name prefix and status, a page at a time."""
        session = await _signed_in(request, runtime, (Resource.RELEASE, Action.READ))
        prefix = (name or "").strip() or None
        if prefix is not None and len(prefix) > _MAX_NAME_FILTER:
            raise ProblemError(400, "VAL_INVALID_REQUEST", f"A name filter is at most {_MAX_NAME_FILTER} characters.")
        wanted = _choice(ReleaseStatus, status, "status")
        query = session.call.query(
            release.ListReleases,
            status=wanted.value if wanted is not None else None,
            name_prefix=prefix,
            page=_list_page(page_token),
        )
        result = parse_data(ReleasePage, await session.relay.query(release.LIST_RELEASES, query))
        filters = (
            '<span><label for="name">Name starts with</label>'
            f'<input id="name" name="name" maxlength="{_MAX_NAME_FILTER}" value="{escape(prefix or "")}"></span>'
            + "<span>"
            + _select("status", "Status", [(s.value, s.value) for s in ReleaseStatus], status)
            + "</span>"
        )
        now = runtime.clock()
        rows = [
            [
                _link(f"/releases/{item.id}", item.name),
                escape(item.status),
                str(len(item.components)),
                f"{_when(item.created_at)} <small>({_age(now, item.created_at)} ago)</small>",
            ]
            for item in result.items
        ]
        body = _listing(
            "/releases",
            filters,
            {"name": prefix, "status": status},
            caption="Releases",
            head=["Release", "Status", "Images", "Created"],
            rows=rows,
            next_token=result.next_page_token,
            empty="No release matches: clear the filters, or create one with POST /api/v1/releases.",
        )
        return session.page("Releases", body)

    @get("/releases/{release_id:str}")
    async def release_page(
        self, request: Request[Any, Any, Any], runtime: NamedDependency[Runtime], release_id: str = _RELEASE_ID
    ) -> Response[Any]:
        """A release: its digests, the environments it reached, and a "promote to next" action."""
        session = await _signed_in(request, runtime)
        return await self._release(session, _path_id(release_id, "release"))

    async def _release(self, session: Session, release_id: UUID, message: str = "", status: int = 200) -> Response[str]:
        session.require(Resource.RELEASE, Action.READ)
        query = session.call.query(release.GetRelease, release_id=release_id)
        item = parse_data(ReleaseOut, await session.relay.query(release.GET_RELEASE, query))
        facts = _facts(
            [
                ("Name", escape(item.name)),
                ("Status", escape(item.status)),
                ("Created", _when(item.created_at)),
                ("Ready", _when(item.ready_at)),
            ]
        )
        images = _table(
            "Images",
            ["Component", "Repository", "Digest", "Tag"],
            [
                [escape(c.name), escape(c.image_repository), f"<code>{escape(c.digest)}</code>", escape(c.tag or "")]
                for c in item.components
            ],
        )
        body = message + facts + images
        if session.identity.can(Resource.ENVIRONMENT, Action.READ) and session.identity.can(
            Resource.PROMOTION, Action.READ
        ):
            body += await self._release_environments(session, item)
        return session.page(f"Release {item.name}", body, status=status)

    async def _release_environments(self, session: Session, item: ReleaseOut) -> str:
        page = PageRequest(page_size=_MATRIX_PAGE)
        environments_data, promotions_data = await asyncio.gather(
            session.relay.query(contract.LIST_ENVIRONMENTS, session.call.query(contract.ListEnvironments, page=page)),
            session.relay.query(
                contract.LIST_PROMOTIONS, session.call.query(contract.ListPromotions, release_id=item.id, page=page)
            ),
        )
        environments = parse_data(EnvironmentPage, environments_data).items
        promotions = parse_data(PromotionPage, promotions_data).items
        latest: dict[UUID, PromotionView] = {}
        for promotion in promotions:  # newest first
            latest.setdefault(promotion.target_environment_id, promotion)
        reached = {p.target_environment_id for p in promotions if p.status == PromotionStatus.DEPLOYED.value}
        rows = []
        for environment in environments:
            last = latest.get(environment.id)
            rows.append(
                [
                    escape(environment.name),
                    "yes" if environment.id in reached else "no",
                    _link(f"/promotions/{last.id}", last.status) if last else "",
                ]
            )
        body = _table("Environments", ["Environment", "Reached", "Latest promotion"], rows)
        if not environments:
            return "<p>No environments yet: create them with POST /api/v1/environments.</p>"
        if item.status != ReleaseStatus.READY.value:
            return body + f"<p>Only a ready release can be promoted; this one is {escape(item.status)}.</p>"
        following = _next_environments(environments, reached)
        if not following:
            return body + "<p>It reached the last environment.</p>"
        if not session.identity.can(Resource.PROMOTION, Action.CREATE):
            return body + "<p>Your roles cannot request promotions.</p>"
        for environment in following:
            field = f"reason-{environment.id}"
            body += (
                f'<form method="post" action="{UI_PREFIX}/releases/{item.id}/promote">{_hidden(session)}'
                f'<input type="hidden" name="environment_id" value="{environment.id}">'
                f'<label for="{field}">Reason for {escape(environment.name)}</label>'
                f'<input id="{field}" name="reason" maxlength="2000" size="40"> '
                f'<button type="submit">Promote to {escape(environment.name)}</button></form>'
            )
        return body

    @post("/releases/{release_id:str}/promote", status_code=303)
    async def promote(
        self, request: Request[Any, Any, Any], runtime: NamedDependency[Runtime], release_id: str = _RELEASE_ID
    ) -> Response[Any]:
        """Request the promotion of a release into the next environment; a refusal is shown on its page."""
        session, form = await _signed_form(request, runtime)
        session.require(Resource.PROMOTION, Action.CREATE)
        rid = _path_id(release_id, "release")
        environment_id = parse_id(form.get("environment_id", ""), "environment_id")
        reason = form.get("reason", "")
        if len(reason) > 2000:
            raise ProblemError(400, "VAL_INVALID_REQUEST", "The reason is longer than 2000 characters.")
        command = session.call.command(
            contract.RequestPromotion, release_id=rid, target_environment_id=environment_id, reason=reason
        )
        try:
            data = await session.relay.command(session.call, contract.REQUEST_PROMOTION, command)
        except ProblemError as exc:
            if exc.status not in (409, 422):
                raise
            return await self._release(session, rid, _message(exc), status=exc.status)
        promotion = parse_data(PromotionView, data)
        response: Response[Any] = Redirect(f"{UI_PREFIX}/promotions/{promotion.id}", status_code=303)
        response.headers.update(SECURITY_HEADERS)
        return response

    # --- promotions ---------------------------------------------------------------------------------

    async def _environments(self, session: Session) -> list[EnvironmentOut]:
        if not session.identity.can(Resource.ENVIRONMENT, Action.READ):
            return []
        query = session.call.query(contract.ListEnvironments, page=PageRequest(page_size=_MATRIX_PAGE))
        return parse_data(EnvironmentPage, await session.relay.query(contract.LIST_ENVIRONMENTS, query)).items

    @get("/promotions")
    async def promotions(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        status: Annotated[str | None, QueryParameter()] = None,
        environment: Annotated[str | None, QueryParameter()] = None,
        page_token: Annotated[str | None, QueryParameter()] = None,
    ) -> Response[Any]:
        """Promotions, newest first, filtered by status and environment, a page at a time."""
        session = await _signed_in(request, runtime, (Resource.PROMOTION, Action.READ))
        wanted = _choice(PromotionStatus, status, "status")
        environment_id = parse_id(environment, "environment") if environment else None
        query = session.call.query(
            contract.ListPromotions,
            status=wanted,
            environment_id=environment_id,
            page=_list_page(page_token),
        )
        data, environments = await asyncio.gather(
            session.relay.query(contract.LIST_PROMOTIONS, query), self._environments(session)
        )
        result = parse_data(PromotionPage, data)
        filters = (
            "<span>"
            + _select("status", "Status", [(s.value, s.value) for s in PromotionStatus], status)
            + "</span><span>"
            + _select("environment", "Environment", [(str(e.id), e.name) for e in environments], environment)
            + "</span>"
        )
        now = runtime.clock()
        rows = [
            [
                _link(f"/releases/{p.release_id}", p.release_name),
                escape(p.target_environment_name),
                _link(f"/promotions/{p.id}", p.status),
                escape(p.status_message or p.reason),
                f"{_age(now, p.updated_at)} ago",
            ]
            for p in result.items
        ]
        body = _listing(
            "/promotions",
            filters,
            {"status": status, "environment": environment},
            caption="Promotions",
            head=["Release", "Environment", "Status", "Why", "Changed"],
            rows=rows,
            next_token=result.next_page_token,
            empty="No promotion matches: clear the filters, or promote a release from its page.",
        )
        return session.page("Promotions", body)

    async def _timeline(self, session: Session, run_id: UUID | None) -> str:
        if run_id is None or not session.identity.can(Resource.WORKFLOW, Action.READ):
            return ""
        try:
            run = parse_data(
                workflow.RunView,
                await session.relay.query(workflow.GET_RUN, session.call.query(workflow.GetRun, run_id=run_id)),
            )
        except ProblemError as exc:
            if exc.status != 404:
                raise
            return "<h2>Timeline</h2><p>The workflow run has not started yet.</p>"
        rows = []
        for step in run.steps:
            logs = (
                f"<details><summary>Logs of {escape(step.node_id)}</summary><pre>{escape(step.logs)}</pre></details>"
                if step.logs
                else ""
            )
            rows.append(
                [
                    escape(step.node_id),
                    escape(step.status),
                    str(step.attempt_number),
                    _when(step.started_at),
                    _when(step.completed_at),
                    escape(step.error or "") + logs,
                ]
            )
        table = _table(
            f"Timeline: {run.template_name} v{run.template_version}, {run.status}",
            ["Step", "Status", "Attempt", "Started", "Completed", "Error and logs"],
            rows,
        )
        return "<h2>Timeline</h2>" + table

    async def _approvals(self, session: Session, promotion_id: UUID) -> str:
        query = session.call.query(approvals.GetApprovals, promotion_id=promotion_id)
        try:
            request = parse_data(ApprovalRequestOut, await session.relay.query(approvals.GET_APPROVALS, query))
        except ProblemError as exc:
            if exc.status != 404:
                raise
            return (
                "<h2>Approvals</h2><p>No approval request: it opens when the gates pass and approvals are needed.</p>"
            )
        summary = (
            f"<p>{escape(request.status)}: {len([v for v in request.votes if v.action == 'approved'])} of "
            f"{request.required} approvals{', separation of duties' if request.require_sod else ''}; "
            f"expires {_when(request.expires_at)}.</p>"
        )
        rows = [[escape(str(v.approver_id)), escape(v.action), escape(v.comment), _when(v.at)] for v in request.votes]
        votes = _table("Votes", ["Approver", "Vote", "Comment", "At"], rows) if rows else "<p>No votes yet.</p>"
        return "<h2>Approvals</h2>" + summary + votes

    @get("/promotions/{promotion_id:str}")
    async def promotion(
        self, request: Request[Any, Any, Any], runtime: NamedDependency[Runtime], promotion_id: str = _ID
    ) -> Response[Any]:
        """A promotion: status, timeline, decision record, approvals, freeze override and evidence."""
        session = await _signed_in(request, runtime, (Resource.PROMOTION, Action.READ))
        query = session.call.query(contract.GetPromotion, promotion_id=_path_id(promotion_id, "promotion"))
        promotion = parse_data(PromotionView, await session.relay.query(contract.GET_PROMOTION, query))
        facts = [
            ("Release", _link(f"/releases/{promotion.release_id}", promotion.release_name)),
            ("Environment", escape(promotion.target_environment_name)),
            ("Status", escape(promotion.status)),
            ("Why", escape(promotion.status_message or promotion.reason)),
            ("Requested", _when(promotion.requested_at)),
            ("Deployment", _link(f"/promotions/{promotion.id}/deployment", "Deployment and targets")),
        ]
        if promotion.freeze_override:
            override = promotion.freeze_override
            facts.append(
                ("Freeze override", escape(f"{override.get('reason', '')} (by {override.get('by', 'unknown')})"))
            )
        body = _facts(facts)
        record = promotion.decision_record or {}
        gates = record.get("gates")
        if isinstance(gates, list) and gates:
            rows = [
                [escape(str(gate.get(key, ""))) for key in ("name", "type", "status", "message")]
                for gate in gates
                if isinstance(gate, dict)
            ]
            body += _table("Decision record", ["Gate", "Type", "Verdict", "Reason"], rows)
            body += f"<p>Inputs hash: <code>{escape(str(record.get('inputs_hash', '')))}</code></p>"
        else:
            body += "<p>No decision yet: the gates are evaluated when the promotion is processed.</p>"
        parts = [self._timeline(session, promotion.workflow_run_id), self._approvals(session, promotion.id)]
        if session.identity.can(Resource.EVIDENCE, Action.READ):
            parts.append(self._evidence(session, promotion.id))
        for part in await asyncio.gather(*parts):
            body += part
        if promotion.status == PromotionStatus.PENDING_APPROVAL.value and session.identity.can(
            Resource.PROMOTION, Action.APPROVE
        ):
            body += _vote_forms(session, promotion.id)
        return session.page(f"Promotion of {promotion.release_name}", body)

    # --- deployments --------------------------------------------------------------------------------

    @get("/promotions/{promotion_id:str}/deployment")
    async def deployment(
        self, request: Request[Any, Any, Any], runtime: NamedDependency[Runtime], promotion_id: str = _ID
    ) -> Response[Any]:
        """A promotion's deployment job (tasks per target), its environment's targets with health and drift.

        While the job runs, the job's section follows it live: a small script of the gateway's replaces it with
        a fresh copy when events of the promotion's event stream arrive (the job's and its tasks'), never on a
        timer. Without script, the page refreshes itself.
        """
        session = await _signed_in(request, runtime)
        return await self._deployment(session, _path_id(promotion_id, "promotion"))

    async def _deployment(
        self, session: Session, promotion_id: UUID, message: str = "", status: int = 200
    ) -> Response[str]:
        promotion, job = await self._promotion_job(session, promotion_id)
        section, live, reload = await self._job_section(session, promotion, job)
        body = ""
        if live:  # outside the section, which the script replaces
            body += (
                '<p id="job-note" role="status">Live: this view updates as the deployment moves on '
                f'(<a href="{UI_PREFIX}/promotions/{promotion.id}/deployment">reload now</a>).</p>'
            )
        body += message + section
        head = _script() if live else ""
        if reload:
            head += f'<noscript><meta http-equiv="refresh" content="{REFRESH_S}"></noscript>'
        return session.page(
            f"Deployment of {promotion.release_name} to {promotion.target_environment_name}",
            body,
            status=status,
            head=head,
        )

    @get("/promotions/{promotion_id:str}/deployment/job")
    async def deployment_job(
        self, request: Request[Any, Any, Any], runtime: NamedDependency[Runtime], promotion_id: str = _ID
    ) -> Response[Any]:
        """The job section of a deployment page alone: what the page's script swaps in as the job moves on."""
        session = await _signed_in(request, runtime)
        promotion, job = await self._promotion_job(session, _path_id(promotion_id, "promotion"))
        section, _, _ = await self._job_section(session, promotion, job)
        return Response(section, media_type="text/html", headers=dict(SECURITY_HEADERS))

    async def _promotion_job(self, session: Session, promotion_id: UUID) -> tuple[PromotionView, JobOut | None]:
        session.require(Resource.PROMOTION, Action.READ)
        query = session.call.query(contract.GetPromotion, promotion_id=promotion_id)
        promotion = parse_data(PromotionView, await session.relay.query(contract.GET_PROMOTION, query))
        try:
            job_query = session.call.query(
                deployments.GetPromotionDeployment,
                promotion_id=promotion_id,
                tasks_page=PageRequest(page_size=_TASK_PAGE),
            )
            job = parse_data(JobOut, await session.relay.query(deployments.GET_PROMOTION_DEPLOYMENT, job_query))
        except ProblemError as exc:
            if exc.status != 404:
                raise
            return promotion, None
        return promotion, job

    async def _job_section(
        self, session: Session, promotion: PromotionView, job: JobOut | None
    ) -> tuple[str, bool, bool]:
        """The live section of the deployment page (the promotion's state, its job, the environment's targets);
        whether it follows live (with script), and whether the page refreshes itself without script (only while
        a deployment is about to start or runs)."""
        waiting = promotion.status in (PromotionStatus.APPROVED.value, PromotionStatus.DEPLOYING.value)
        running = job is not None and job.status in _ACTIVE_JOB
        # Followed while the job runs, and before it exists while the promotion may still deploy.
        live = running or (job is None and promotion.status in _UNDECIDED)
        attributes = f'id="job" data-live-active="{"true" if live else "false"}"'
        if live:
            stream = f"{UI_PREFIX}/events/stream?" + urlencode({"resource": f"promotions/{promotion.id}"})
            attributes += (
                f' data-live-fragment="{UI_PREFIX}/promotions/{promotion.id}/deployment/job"'
                f' data-live-stream="{escape(stream)}"'
            )
        if job is None:
            content = (
                "<p>No deployment yet: it starts once the promotion is approved.</p>"
                if not waiting
                else "<p>The deployment is about to start.</p>"
            )
        else:
            content = self._job(job) + self._rollback_form(session, promotion, job)
        content = (
            "<p>" + _link(f"/promotions/{promotion.id}", f"Back to the promotion ({promotion.status})") + "</p>"
        ) + content
        if session.identity.can(Resource.TARGET, Action.READ):
            content += await self._targets(session, promotion.target_environment_id)
        section = f'<section {attributes} aria-label="Deployment job">{content}</section>'
        return section, live, running or (job is None and waiting)

    def _rollback_form(self, session: Session, promotion: PromotionView, job: JobOut) -> str:
        if job.status in _ACTIVE_JOB or job.kind == "rollback":
            return ""
        if not session.identity.can(Resource.PROMOTION, Action.DEPLOY):
            return "<p>Your roles cannot roll deployments back.</p>"
        field = f"rollback-reason-{job.id}"
        return (
            f'<form method="post" action="{UI_PREFIX}/promotions/{promotion.id}/rollback">{_hidden(session)}'
            f'<input type="hidden" name="job_id" value="{job.id}">'
            f'<label for="{field}">Reason for the rollback</label>'
            f'<input id="{field}" name="reason" maxlength="2000" size="40"> '
            '<button type="submit">Roll back this deployment</button></form>'
        )

    @post("/promotions/{promotion_id:str}/rollback", status_code=303)
    async def rollback(
        self, request: Request[Any, Any, Any], runtime: NamedDependency[Runtime], promotion_id: str = _ID
    ) -> Response[Any]:
        """Roll a finished job's targets back to their previous digests; a refusal is shown on the page."""
        session, form = await _signed_form(request, runtime)
        session.require(Resource.PROMOTION, Action.DEPLOY)
        pid = _path_id(promotion_id, "promotion")
        job_id = parse_id(form.get("job_id", ""), "job_id")
        reason = form.get("reason", "").strip()
        if len(reason) > 2000:
            raise ProblemError(400, "VAL_INVALID_REQUEST", "The reason is longer than 2000 characters.")
        promotion, job = await self._promotion_job(session, pid)
        if job is None or job.id != job_id:
            raise ProblemError(404, "RES_NOT_FOUND", "No such deployment job of this promotion.")
        command = session.call.command(deployments.RollbackJob, job_id=job_id, target_ids=None, reason=reason or None)
        try:
            await session.relay.command(session.call, deployments.ROLLBACK_JOB, command)
        except ProblemError as exc:
            if exc.status not in (409, 422):
                raise
            return await self._deployment(session, pid, _message(exc), status=exc.status)
        return _see_other(f"{UI_PREFIX}/promotions/{promotion.id}/deployment")

    @post("/targets/{target_id:str}/remediate", status_code=303)
    async def remediate(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        target_id: str = Parameter(description="Target id"),
    ) -> Response[Any]:
        """Redeploy what a drifted target's sticker names; a refusal is shown on the deployments page."""
        session, _ = await _signed_form(request, runtime)
        session.require(Resource.PROMOTION, Action.DEPLOY)
        command = session.call.command(deployments.RemediateTarget, target_id=_path_id(target_id, "target"))
        try:
            await session.relay.command(session.call, deployments.REMEDIATE_TARGET, command)
        except ProblemError as exc:
            if exc.status not in (409, 422):
                raise
            return await self._deployments(session, None, None, _message(exc), code=exc.status)
        return _see_other(f"{UI_PREFIX}/deployments?remediating=1")

    @get("/events/stream", media_type="text/event-stream")
    async def events_stream(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        resource: Annotated[str | None, QueryParameter(max_length=200)] = None,
    ) -> Response[Any] | Stream:
        """The tenant's public events about one resource, live, for the pages' script (the session signs in)."""
        session = await _session(request, runtime)
        if session is None:
            raise ProblemError(401, "AUTH_SESSION_REQUIRED", "Sign in again.")
        session.require(Resource.PROMOTION, Action.READ)
        header = request.headers.get("last-event-id")
        flt = StreamFilter(resource=checked_resource(resource))
        events = await runtime.get_event_streams().open(
            session.identity.tenant_id, flt, parse_last_event_id(header) if header is not None else None
        )
        return Stream(
            events,
            media_type=MEDIA_TYPE,
            headers={**SECURITY_HEADERS, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def _job(self, job: JobOut) -> str:
        done = sum(1 for task in job.tasks if task.status == "succeeded")
        facts = _facts(
            [
                ("Job", escape(f"{job.kind} ({job.strategy})")),
                ("Status", f'<strong id="job-status">{escape(job.status)}</strong>'),
                ("Progress", f"{done} of {len(job.tasks)} tasks succeeded, {job.target_count} targets"),
                ("Started", _when(job.started_at)),
                ("Finished", _when(job.finished_at)),
            ]
        )
        rows = []
        for task in job.tasks:
            logs = "\n".join(task.logs) + ("\n(truncated)" if task.logs_truncated else "")
            detail = escape(task.error_code or "") + " " + escape(task.message)
            if logs.strip():
                detail += (
                    f"<details><summary>Logs of {escape(task.target_name)}</summary><pre>{escape(logs)}</pre></details>"
                )
            rows.append(
                [
                    escape(task.target_name),
                    str(task.batch),
                    escape(task.type),
                    escape(task.status),
                    str(task.attempt),
                    _digests(task.components),
                    detail,
                ]
            )
        table = _table("Tasks", ["Target", "Batch", "Task", "Status", "Attempt", "Digest", "Message and logs"], rows)
        return facts + (table if rows else "<p>No tasks yet.</p>")

    def _remediate_form(self, session: Session, target: TargetOut) -> str:
        if not target.drift_detected or not session.identity.can(Resource.PROMOTION, Action.DEPLOY):
            return ""
        return (
            f'<form method="post" action="{UI_PREFIX}/targets/{target.id}/remediate">{_hidden(session)}'
            f'<button type="submit" aria-label="Remediate {escape(target.name)}">Remediate</button></form>'
        )

    async def _targets(self, session: Session, environment_id: UUID | None = None) -> str:
        query = session.call.query(
            deployments.ListTargets, environment_id=environment_id, page=PageRequest(page_size=_MATRIX_PAGE)
        )
        targets = parse_data(TargetPage, await session.relay.query(deployments.LIST_TARGETS, query)).items
        if not targets:
            return "<h2>Targets</h2><p>No targets: the environment deploys nothing (add one with POST /api/v1/environments/{id}/targets).</p>"
        rows = [
            [
                escape(t.name),
                escape(t.health_status),
                _digests({"name": name, "digest": digest} for name, digest in sorted(t.current.items())),
                _drift(t) + self._remediate_form(session, t),
                _when(t.updated_at),
            ]
            for t in targets
        ]
        return "<h2>Targets</h2>" + _table("Targets", ["Target", "Health", "Current digest", "Drift", "Updated"], rows)

    @get("/deployments")
    async def deployments_page(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        status: Annotated[str | None, QueryParameter()] = None,
        page_token: Annotated[str | None, QueryParameter()] = None,
        remediating: Annotated[str | None, QueryParameter(max_length=1)] = None,
    ) -> Response[Any]:
        """Deployment jobs, newest first, and every target with its health, current digests and drift."""
        session = await _signed_in(request, runtime)
        message = (
            '<p role="status">Remediation started: a job redeploys what the target\'s sticker names.</p>'
            if remediating
            else ""
        )
        return await self._deployments(session, status, page_token, message)

    async def _deployments(
        self, session: Session, status: str | None, page_token: str | None, message: str = "", code: int = 200
    ) -> Response[str]:
        session.require(Resource.PROMOTION, Action.READ)
        wanted = _choice(deployments.JobStatus, status, "status")
        query = session.call.query(deployments.ListJobs, status=wanted, page=_list_page(page_token))
        jobs = parse_data(JobPage, await session.relay.query(deployments.LIST_JOBS, query))
        filters = (
            "<span>"
            + _select("status", "Status", [(s.value, s.value) for s in deployments.JobStatus], status)
            + "</span>"
        )
        rows = [
            [
                _link(f"/promotions/{job.promotion_id}/deployment", job.release_name)
                if job.promotion_id
                else escape(job.release_name),
                escape(job.environment_name),
                escape(f"{job.kind} ({job.strategy})"),
                escape(job.status),
                str(job.target_count),
                _when(job.created_at),
            ]
            for job in jobs.items
        ]
        body = message + _listing(
            "/deployments",
            filters,
            {"status": status},
            caption="Deployment jobs",
            head=["Release", "Environment", "Job", "Status", "Targets", "Created"],
            rows=rows,
            next_token=jobs.next_page_token,
            empty="No deployment job matches: a job starts when an approved promotion deploys.",
        )
        if session.identity.can(Resource.TARGET, Action.READ):
            body += await self._targets(session)
        return session.page("Deployments", body, status=code)

    # --- agents -------------------------------------------------------------------------------------

    @get("/agents")
    async def agents(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        status: Annotated[str | None, QueryParameter()] = None,
        page_token: Annotated[str | None, QueryParameter()] = None,
    ) -> Response[Any]:
        """The tenant's agents by name: status, last heartbeat, version, capabilities and labels."""
        session = await _signed_in(request, runtime, (Resource.AGENT, Action.READ))
        wanted = _choice(AgentStatus, status, "status")
        query = session.call.query(deployments.ListAgents, status=wanted, page=_list_page(page_token))
        result = parse_data(AgentPage, await session.relay.query(deployments.LIST_AGENTS, query))
        filters = "<span>" + _select("status", "Status", [(s.value, s.value) for s in AgentStatus], status) + "</span>"
        now = runtime.clock()
        rows = [
            [
                escape(agent.name),
                f'<span class="{"open" if agent.status == "online" else "closed"}">{escape(agent.status)}</span>',
                (
                    f"{_when(agent.last_heartbeat_at)} <small>({_age(now, agent.last_heartbeat_at)} ago)</small>"
                    if agent.last_heartbeat_at
                    else "never"
                ),
                escape(agent.version),
                escape(", ".join(agent.capabilities)) or "-",
                "<br>".join(f"<code>{escape(k)}={escape(v)}</code>" for k, v in sorted(agent.labels.items())) or "-",
            ]
            for agent in result.items
        ]
        body = _listing(
            "/agents",
            filters,
            {"status": status},
            caption="Agents",
            head=["Agent", "Status", "Last heartbeat", "Version", "Capabilities", "Labels"],
            rows=rows,
            next_token=result.next_page_token,
            empty="No agent matches: an agent registers with a one-time token (POST /api/v1/agent-tokens) "
            "and shows up here once it has.",
        )
        return session.page("Agents", body)

    # --- freeze calendar ----------------------------------------------------------------------------

    @get("/freeze")
    async def freeze(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        tz: Annotated[str | None, QueryParameter()] = None,
    ) -> Response[Any]:
        """Each environment's freeze and deployment windows, whether it is open now and when that changes."""
        session = await _signed_in(request, runtime, (Resource.ENVIRONMENT, Action.READ))
        zone_name = (tz or "").strip() or "UTC"
        try:
            zone = ZoneInfo(zone_name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ProblemError(
                400, "VAL_INVALID_REQUEST", f"{zone_name!r} is not a time zone; use an IANA name like Europe/Berlin."
            ) from None
        board = await self._board(session, windows=True)
        form = (
            f'<form class="filters" method="get" action="{UI_PREFIX}/freeze">'
            '<span><label for="tz">Show times in (IANA time zone)</label>'
            f'<input id="tz" name="tz" value="{escape(zone_name)}" maxlength="64"></span>'
            '<button type="submit">Show</button></form>'
        )
        if not board.environments:
            return session.page("Freeze calendar", form + "<p>No environments yet.</p>")
        body = form
        for entry in board.environments:
            environment, state, items = entry.environment, entry.state, entry.windows
            if state.closed:
                now = f'<span class="closed">frozen</span> ({escape(state.reason or "")}), opens {_when(state.next_open, zone)}'
            else:
                now = f'<span class="open">open</span>, next freeze {_when(state.next_close, zone)}'
            rows = [
                [
                    "freeze" if w.kind == "deny" else "deployment window",
                    _window(w, zone),
                    escape(w.reason),
                ]
                for w in items
            ]
            body += f"<h2>{escape(environment.name)}</h2><p>{now}</p>"
            body += (
                _table(f"Windows of {environment.name}", ["Kind", "When", "Reason"], rows)
                if rows
                else "<p>No windows: promotions are never held by the calendar here.</p>"
            )
        return session.page("Freeze calendar", body)

    # --- evidence -----------------------------------------------------------------------------------

    @get("/evidence")
    async def evidence_list(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        packet_type: Annotated[str | None, QueryParameter()] = None,
        page_token: Annotated[str | None, QueryParameter()] = None,
    ) -> Response[Any]:
        """Evidence packets in chain order, filtered by type, with verify links and a bundle export."""
        session = await _signed_in(request, runtime, (Resource.EVIDENCE, Action.READ))
        wanted = _choice(PacketType, packet_type, "packet_type")
        query = session.call.query(evidence.ListPackets, packet_type=wanted, page=_list_page(page_token))
        result = parse_data(PacketPage, await session.relay.query(evidence.LIST_PACKETS, query))
        filters = (
            "<span>" + _select("packet_type", "Type", [(t.value, t.value) for t in PacketType], packet_type) + "</span>"
        )
        export = (
            f'<h2>Export</h2><form class="filters" method="get" action="{UI_PREFIX}/evidence/export">'
            '<span><label for="from">From (UTC day)</label><input id="from" name="from" type="date"></span>'
            '<span><label for="to">Through (UTC day)</label><input id="to" name="to" type="date"></span>'
            '<button type="submit">Download bundle</button></form>'
            "<p>The bundle (tar.gz) verifies offline: see its VERIFY.md.</p>"
        )
        rows = [
            [
                escape(p.packet_type),
                str(p.sequence),
                _link(f"/promotions/{p.promotion_id}", "promotion") if p.promotion_id else "",
                f"<code>{escape(p.content_hash)}</code>",
                _when(p.created_at),
                f'<a href="{UI_PREFIX}/evidence/{p.id}">Verify</a>',
            ]
            for p in result.items
        ]
        body = _listing(
            "/evidence",
            filters,
            {"packet_type": packet_type},
            caption="Evidence packets",
            head=["Type", "Chain position", "Of", "Content hash", "Signed", "Check"],
            rows=rows,
            next_token=result.next_page_token,
            empty="No packet matches: packets are signed as promotions are decided and deployed.",
        )
        return session.page("Evidence", body + export)

    @get("/evidence/export")
    async def evidence_export(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        created_from: Annotated[str | None, QueryParameter(name="from")] = None,
        created_to: Annotated[str | None, QueryParameter(name="to")] = None,
    ) -> Response[Any] | Stream:
        """The evidence bundle of the chosen days, as the API's export builds it."""
        session = await _signed_in(request, runtime, (Resource.EVIDENCE, Action.READ))
        start, end = _date(created_from, "from"), _date(created_to, "to", end=True)
        return await export_stream(session.call, session.relay, runtime, start, end, headers=dict(SECURITY_HEADERS))
