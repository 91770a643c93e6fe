"""``/ui``: the web dashboard, server-rendered HTML served by the gateway itself (no script, no CDN).

Sign-in takes an API token and opens a server-side session bound to it; the ``HttpOnly``, ``SameSite=Strict``
cookie (``Secure`` when the request came over HTTPS) holds only the session's random secret. Every page
authenticates the session as the API authenticates the token (revoking the token ends its sessions), and
signing out ends the session on the server, so a copied cookie stops working at once. Pages read through the same relay, contracts and permissions as the API routes: nothing reaches a
service around the gateway, and another tenant's object is a 404 here as there.

Every form that changes something carries a CSRF token: an HMAC of the session secret, which a page of
another site can neither read nor compute. The sign-in form, which has no session yet, is bound to a random
value kept in a short-lived cookie of its own. Every answer carries a strict Content-Security-Policy that
allows no script at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from html import escape
from typing import Any, Final
from urllib.parse import parse_qs
from uuid import UUID

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import Parameter
from litestar.response import Redirect

from stella.contracts import evidence
from stella.contracts import promotion as contract
from stella.contracts.envelope import PageRequest
from stella.contracts.promotion import PromotionStatus
from stella.gateway.auth import Identity, hash_token, new_session_secret
from stella.gateway.controllers.promotions import cast_vote
from stella.gateway.dependencies import parse_id
from stella.gateway.permissions import Action, Resource
from stella.gateway.problems import ProblemError
from stella.gateway.relay import CallContext, Relay, parse_data
from stella.gateway.runtime import Runtime
from stella.gateway.schemas import (
    EnvironmentOut,
    EnvironmentPage,
    EnvironmentStateOut,
    PacketPage,
    PromotionOut,
    PromotionPage,
    VerificationOut,
    VoteAction,
)
from stella.gateway.tracing import trace_id

UI_PREFIX: Final[str] = "/ui"
"""Where the dashboard is served."""

SESSION_COOKIE: Final[str] = "stella_session"
"""The cookie holding the dashboard session's secret (never the API token)."""

SIGN_IN_COOKIE: Final[str] = "stella_sign_in"
"""The cookie binding the sign-in form to the browser that loaded it (login CSRF)."""

CSRF_FIELD: Final[str] = "csrf_token"
"""Name of the hidden field carrying the CSRF token of a form."""

CSP: Final[str] = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""The dashboard's Content-Security-Policy: no script, nothing from elsewhere, not framed."""

SECURITY_HEADERS: Final[dict[str, str]] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
"""Headers of every dashboard answer."""

_ID = Parameter(description="Promotion id")
_PACKET_ID = Parameter(description="Evidence packet id")
_MAX_FORM_BYTES: Final[int] = 8192
_MATRIX_PAGE: Final[int] = 500
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
"""
"""The dashboard's one stylesheet (served from /ui/style.css so the CSP can forbid inline styles)."""


def csrf_for(token: str) -> str:
    """The CSRF token of a session: an HMAC of its secret (stable for the session, unguessable)."""
    return hmac.new(token.encode(), b"stella-ui-csrf", hashlib.sha256).hexdigest()


def _secure(request: Request[Any, Any, Any]) -> bool:
    return request.url.scheme == "https"


def _page(title: str, body: str, *, identity: Identity | None = None, status: int = 200) -> Response[str]:
    nav = ""
    if identity is not None:
        nav = (
            f'<nav aria-label="Main"><a href="{UI_PREFIX}">Overview</a> '
            f'<a href="{UI_PREFIX}/approvals">Approvals</a></nav>'
            f"<span>{escape(identity.principal_name)}</span>"
            f'<form method="post" action="{UI_PREFIX}/sign-out">{{csrf}}<button type="submit">Sign out</button></form>'
        )
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} · Stella</title>"
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

    def page(self, title: str, body: str, status: int = 200) -> Response[str]:
        """A page of this session (its sign-out form carries the CSRF token)."""
        response = _page(title, body, identity=self.identity, status=status)
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


def _to_sign_in() -> Response[Any]:
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


class DashboardController(Controller):
    """The dashboard's pages; they authenticate from the session cookie, not from a bearer token."""

    path = UI_PREFIX
    include_in_schema = False
    opt = {"exclude_from_auth": True}
    exception_handlers = {ProblemError: ui_problem}

    @get("/style.css", media_type="text/css")
    async def style(self) -> Response[str]:
        """The stylesheet."""
        return Response(STYLE, media_type="text/css", headers={"Cache-Control": "max-age=3600"})

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
        session = await _session(request, runtime)
        if session is None:
            return _to_sign_in()
        _check_csrf(session.csrf, await _form(request))
        await runtime.get_store().end_session(hash_token(request.cookies[SESSION_COOKIE]), runtime.clock())
        return _to_sign_in()

    @get("/")
    async def overview(self, request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]) -> Response[Any]:
        """Environments in promotion order by releases: where each release is, its status and age, freezes."""
        session = await _session(request, runtime)
        if session is None:
            return _to_sign_in()
        session.require(Resource.ENVIRONMENT, Action.READ)
        session.require(Resource.PROMOTION, Action.READ)
        page = PageRequest(page_size=_MATRIX_PAGE)
        environments_data, promotions_data = await asyncio.gather(
            session.relay.query(contract.LIST_ENVIRONMENTS, session.call.query(contract.ListEnvironments, page=page)),
            session.relay.query(contract.LIST_PROMOTIONS, session.call.query(contract.ListPromotions, page=page)),
        )
        environments = parse_data(EnvironmentPage, environments_data).items
        promotions = parse_data(PromotionPage, promotions_data).items
        states = await asyncio.gather(*(self._state(session, environment) for environment in environments))
        if not environments:
            return session.page("Overview", "<p>No environments yet: create them with POST /api/v1/environments.</p>")
        now = runtime.clock()
        # Newest first: the first promotion seen of a (release, environment) is its current state.
        cells: dict[tuple[UUID, UUID], PromotionOut] = {}
        releases: dict[UUID, str] = {}
        for promotion in promotions:
            releases.setdefault(promotion.release_id, promotion.release_name)
            cells.setdefault((promotion.release_id, promotion.target_environment_id), promotion)
        head = ["Release"]
        for environment, state in zip(environments, states, strict=True):
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
                    f'<a href="{UI_PREFIX}/promotions/{cell.id}">{escape(cell.status)}</a>'
                    f" <small>{_age(now, cell.updated_at)}</small>"
                )
            rows.append(row)
        body = "" if rows else "<p>No promotions yet: promote a release with POST /api/v1/promotions.</p>"
        return session.page("Overview", body + _table("Releases by environment", head, rows))

    @get("/approvals")
    async def approvals(self, request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]) -> Response[Any]:
        """The approvals inbox: promotions waiting for approvals, with approve and reject."""
        session = await _session(request, runtime)
        if session is None:
            return _to_sign_in()
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
        session = await _session(request, runtime)
        if session is None:
            return _to_sign_in()
        form = await _form(request)
        _check_csrf(session.csrf, form)
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
                escape(packet.created_at.isoformat()),
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
        session = await _session(request, runtime)
        if session is None:
            return _to_sign_in()
        session.require(Resource.EVIDENCE, Action.READ)
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

    async def _state(self, session: Session, environment: EnvironmentOut) -> EnvironmentStateOut:
        query = session.call.query(contract.GetEnvironmentState, environment_id=environment.id)
        return parse_data(EnvironmentStateOut, await session.relay.query(contract.GET_ENVIRONMENT_STATE, query))

    @get("/promotions/{promotion_id:str}")
    async def promotion(
        self, request: Request[Any, Any, Any], runtime: NamedDependency[Runtime], promotion_id: str = _ID
    ) -> Response[Any]:
        """A promotion with its status and decision record (each gate's verdict and reason)."""
        session = await _session(request, runtime)
        if session is None:
            return _to_sign_in()
        session.require(Resource.PROMOTION, Action.READ)
        try:
            parsed = UUID(promotion_id)
        except ValueError:
            raise ProblemError(404, "RES_NOT_FOUND", "No such promotion.") from None
        query = session.call.query(contract.GetPromotion, promotion_id=parsed)
        promotion = parse_data(PromotionOut, await session.relay.query(contract.GET_PROMOTION, query))
        facts = [
            ("Release", escape(promotion.release_name)),
            ("Environment", escape(promotion.target_environment_name)),
            ("Status", escape(promotion.status)),
            ("Why", escape(promotion.status_message or promotion.reason)),
            ("Requested", escape(promotion.requested_at.isoformat())),
        ]
        body = "<dl>" + "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts) + "</dl>"
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
        if session.identity.can(Resource.EVIDENCE, Action.READ):
            body += await self._evidence(session, promotion.id)
        if promotion.status == PromotionStatus.PENDING_APPROVAL.value and session.identity.can(
            Resource.PROMOTION, Action.APPROVE
        ):
            body += _vote_forms(session, promotion.id)
        return session.page(f"Promotion of {promotion.release_name}", body)
