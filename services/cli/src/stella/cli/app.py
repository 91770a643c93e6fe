"""The ``stella`` commands. Each talks to the public HTTP API only (``evidence verify`` to nothing at all).

Exit codes: 0 success; 1 the API refused the request, or a followed promotion did not succeed, or a bundle did
not verify; 2 wrong usage; 3 not logged in or the API cannot be reached; 4 ``--wait`` timed out.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Final, TypeVar

import httpx
import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from stella.cli import config, follow
from stella.cli.api import Api, ApiError, Unreachable
from stella.cli.render import Output, emit_json, err, out, problem, show

EXIT_FAILED: Final[int] = 1
EXIT_USAGE: Final[int] = 2
EXIT_UNREACHABLE: Final[int] = 3
EXIT_TIMEOUT: Final[int] = 4

app = typer.Typer(
    name="stella",
    help="Stella from a terminal: releases pinned by digest, promoted through environments, with evidence.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
components_app = typer.Typer(help="Components: image repositories and their version maps.", no_args_is_help=True)
versions_app = typer.Typer(help="A component's versions (tag -> digest).", no_args_is_help=True)
releases_app = typer.Typer(help="Releases: immutable bundles of image digests.", no_args_is_help=True)
envs_app = typer.Typer(help="Environments, in promotion order.", no_args_is_help=True)
freeze_app = typer.Typer(help="Freeze (and deployment) windows of an environment.", no_args_is_help=True)
promotions_app = typer.Typer(help="Promotions.", no_args_is_help=True)
evidence_app = typer.Typer(help="Signed evidence: export a bundle, verify one offline.", no_args_is_help=True)
events_app = typer.Typer(help="Public events.", no_args_is_help=True)
app.add_typer(components_app, name="components")
app.add_typer(versions_app, name="versions")
app.add_typer(releases_app, name="releases")
app.add_typer(envs_app, name="envs")
app.add_typer(freeze_app, name="freeze")
app.add_typer(promotions_app, name="promotions")
app.add_typer(evidence_app, name="evidence")
app.add_typer(events_app, name="events")


class State:
    """Options every command shares (set by the main callback)."""

    output: Output = Output.TABLE
    url: str | None = None
    token: str | None = None


STATE = State()
F = TypeVar("F", bound=Callable[..., Any])

COMPONENT_COLUMNS = ("id", "name", "image_repository", "default_channel", "created_at")
VERSION_COLUMNS = ("tag", "digest", "semver", "channel", "updated_at")
RELEASE_COLUMNS = ("id", "name", "status", "components", "created_at", "ready_at")
ENV_COLUMNS = ("id", "name", "order_index", "required_approvals", "require_sod")
WINDOW_COLUMNS = ("id", "kind", "start", "end", "rrule", "duration_s", "timezone", "reason")
PROMOTION_COLUMNS = ("id", "status", "release_name", "target_environment_name", "status_message", "requested_at")
EVENT_COLUMNS = ("time", "type", "subject")


@app.callback()
def main_options(
    output: Annotated[
        Output, typer.Option("--output", "-o", help="table for people, json for scripts.")
    ] = Output.TABLE,
    url: Annotated[
        str | None, typer.Option(help="API URL (else STELLA_URL, else the one `stella login` saved).")
    ] = None,
    token: Annotated[
        str | None, typer.Option(help="API token (else STELLA_TOKEN, else the saved one).", hidden=True)
    ] = None,
) -> None:
    """Options of every command."""
    STATE.output, STATE.url, STATE.token = output, url, token


def _api() -> Api:
    return Api(config.load(STATE.url, STATE.token))


def handled(func: F) -> F:
    """Turn API errors into a message and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ApiError as exc:
            problem(exc)
            raise typer.Exit(EXIT_UNREACHABLE if exc.status == 401 else EXIT_FAILED) from None
        except (config.NotLoggedIn, Unreachable) as exc:
            err.print(f"[bold red]Error:[/bold red] {exc}")
            raise typer.Exit(EXIT_UNREACHABLE) from None

    return wrapper  # type: ignore[return-value]


def _items(api: Api, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a paged list."""
    items: list[dict[str, Any]] = []
    token = None
    while True:
        page = api.get(path, page_size=500, page_token=token, **params)
        items.extend(page["items"])
        token = page.get("next_page_token")
        if not token:
            return items


def _uuid_like(value: str) -> bool:
    return len(value) == 36 and value.count("-") == 4


def resolve_component(api: Api, ref: str) -> str:
    """A component's id from its id or name."""
    if _uuid_like(ref):
        return ref
    for item in _items(api, "/components", name_prefix=ref):
        if item["name"] == ref:
            return str(item["id"])
    raise ApiError(404, "RES_NOT_FOUND", "Not found", f"no component named {ref!r}")


def resolve_release(api: Api, ref: str) -> str:
    """A release's id from its id or name."""
    if _uuid_like(ref):
        return ref
    for item in _items(api, "/releases", name_prefix=ref):
        if item["name"] == ref:
            return str(item["id"])
    raise ApiError(404, "RES_NOT_FOUND", "Not found", f"no release named {ref!r}")


def resolve_env(api: Api, ref: str) -> str:
    """An environment's id from its id or name."""
    if _uuid_like(ref):
        return ref
    for item in _items(api, "/environments"):
        if item["name"] == ref:
            return str(item["id"])
    raise ApiError(404, "RES_NOT_FOUND", "Not found", f"no environment named {ref!r}")


# --- login ----------------------------------------------------------------------------------------------


@app.command()
@handled
def login(
    url: Annotated[str, typer.Option(help="The API's URL, e.g. http://127.0.0.1:8080.", prompt=True)],
    token: Annotated[str, typer.Option(help="An API token (stl_...).", prompt=True, hide_input=True)],
) -> None:
    """Check a URL and token against the API and keep them (in the user's config directory, mode 0600)."""
    profile = config.Profile(url=url.rstrip("/"), token=token.strip())
    with Api(profile) as api:
        api.get("/events/types")  # any principal may read it: proves the URL and the token
    path = config.save(profile)
    err.print(f"Logged in to {profile.url}; saved to {path}")


@app.command()
def logout() -> None:
    """Forget the saved URL and token."""
    err.print("Logged out." if config.forget() else "Not logged in.")


# --- components and versions ----------------------------------------------------------------------------


@components_app.command("list")
@handled
def components_list(prefix: Annotated[str | None, typer.Option(help="Only names starting with this.")] = None) -> None:
    """List components."""
    with _api() as api:
        show({"items": _items(api, "/components", name_prefix=prefix)}, STATE.output, COMPONENT_COLUMNS)


@components_app.command("create")
@handled
def components_create(
    name: str,
    image: Annotated[str, typer.Option(help="Image repository, e.g. registry.example.com/shop/api.")],
    version_map: Annotated[
        bool, typer.Option("--version-map", help="Resolve tags from versions registered by hand, not the registry.")
    ] = False,
    registry_integration: Annotated[
        str | None,
        typer.Option(help="Id of the registry integration whose credential reads the registry (a private one)."),
    ] = None,
) -> None:
    """Create a component (an image repository)."""
    body: dict[str, Any] = {"name": name, "image_repository": image}
    if version_map:
        body["versioning_strategy"] = {"resolve": "version-map"}
    if registry_integration:
        body["registry_integration_id"] = registry_integration
    with _api() as api:
        show(api.post("/components", body), STATE.output, COMPONENT_COLUMNS)


@components_app.command("sync")
@handled
def components_sync(component: str) -> None:
    """Read every tag and digest of the component's repository from its registry."""
    with _api() as api:
        cid = resolve_component(api, component)
        show(
            api.post(f"/components/{cid}/sync-versions"),
            STATE.output,
            ("component_id", "tags_seen", "resolved", "updated", "unchanged"),
        )


@versions_app.command("list")
@handled
def versions_list(component: str) -> None:
    """List a component's versions, newest first."""
    with _api() as api:
        cid = resolve_component(api, component)
        show({"items": _items(api, f"/components/{cid}/versions")}, STATE.output, VERSION_COLUMNS)


@versions_app.command("add")
@handled
def versions_add(
    component: str,
    tag: Annotated[str, typer.Option()],
    digest: Annotated[str, typer.Option(help="sha256:<64 hex>")],
    semver: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Register a tag of a component by hand (air-gapped registries)."""
    with _api() as api:
        cid = resolve_component(api, component)
        body = {"tag": tag, "digest": digest, **({"semver": semver} if semver else {})}
        show(api.post(f"/components/{cid}/versions", body), STATE.output, VERSION_COLUMNS)


# --- releases -------------------------------------------------------------------------------------------


def _component_spec(value: str) -> dict[str, str]:
    if "@" in value:
        name, digest = value.split("@", 1)
        return {"component": name, "digest": digest}
    if "=" in value:
        name, tag = value.split("=", 1)
        return {"component": name, "tag": tag}
    raise typer.BadParameter(f"{value!r}: use COMPONENT=TAG or COMPONENT@sha256:DIGEST")


def _release_view(release: dict[str, Any]) -> dict[str, Any]:
    if STATE.output == Output.JSON:
        return release
    components = [f"{c['name']}@{c['digest'][:19]}…" for c in release.get("components", [])]
    return {**release, "components": components}


@releases_app.command("create")
@handled
def releases_create(
    name: str,
    component: Annotated[
        list[str],
        typer.Option("--component", "-c", help="COMPONENT=TAG (resolved now) or COMPONENT@sha256:DIGEST; repeat."),
    ],
    ready: Annotated[bool, typer.Option("--ready", help="Also freeze it so it can be promoted.")] = False,
) -> None:
    """Create a release; tags are resolved to digests now and only digests are kept."""
    specs = [_component_spec(c) for c in component]
    with _api() as api:
        release = api.post("/releases", {"name": name, "components": specs})
        if ready:
            release = api.post(f"/releases/{release['id']}/ready")
        show(_release_view(release), STATE.output, RELEASE_COLUMNS)


@releases_app.command("ready")
@handled
def releases_ready(release: str) -> None:
    """Freeze a draft release: it cannot change any more, and it can be promoted."""
    with _api() as api:
        show(_release_view(api.post(f"/releases/{resolve_release(api, release)}/ready")), STATE.output, RELEASE_COLUMNS)


@releases_app.command("list")
@handled
def releases_list(
    status: Annotated[str | None, typer.Option(help="draft, ready, deployed or deprecated.")] = None,
    prefix: Annotated[str | None, typer.Option(help="Only names starting with this.")] = None,
) -> None:
    """List releases, newest first."""
    with _api() as api:
        items = [_release_view(r) for r in _items(api, "/releases", status=status, name_prefix=prefix)]
        show({"items": items}, STATE.output, RELEASE_COLUMNS)


@releases_app.command("get")
@handled
def releases_get(release: str) -> None:
    """Show a release with its digests."""
    with _api() as api:
        show(_release_view(api.get(f"/releases/{resolve_release(api, release)}")), STATE.output, RELEASE_COLUMNS)


# --- environments and freeze windows --------------------------------------------------------------------


@envs_app.command("list")
@handled
def envs_list() -> None:
    """List environments in promotion order."""
    with _api() as api:
        show({"items": _items(api, "/environments")}, STATE.output, ENV_COLUMNS)


@envs_app.command("create")
@handled
def envs_create(
    name: str,
    order: Annotated[int, typer.Option(help="Position in the promotion order (0 first).")],
    approvals: Annotated[int, typer.Option(help="Distinct approvals a promotion needs.")] = 0,
    sod: Annotated[bool, typer.Option("--sod", help="The requester may not approve.")] = False,
) -> None:
    """Create an environment."""
    with _api() as api:
        body = {"name": name, "order_index": order, "required_approvals": approvals, "require_sod": sod}
        show(api.post("/environments", body), STATE.output, ENV_COLUMNS)


@envs_app.command("state")
@handled
def envs_state(env: str) -> None:
    """Whether promotions into the environment are open now, and until when."""
    with _api() as api:
        show(
            api.get(f"/environments/{resolve_env(api, env)}/state"),
            STATE.output,
            ("closed", "reason", "next_open", "next_close"),
        )


@freeze_app.command("add")
@handled
def freeze_add(
    env: str,
    reason: Annotated[str, typer.Option(help="Why (shown to whoever is held).")],
    start: Annotated[datetime | None, typer.Option(help="One-off window start (with offset).")] = None,
    end: Annotated[datetime | None, typer.Option(help="One-off window end.")] = None,
    rrule: Annotated[
        str | None, typer.Option(help="Recurring: an RFC 5545 rule, e.g. FREQ=WEEKLY;BYDAY=FR;BYHOUR=16.")
    ] = None,
    duration: Annotated[float | None, typer.Option(help="Recurring: seconds each occurrence lasts.")] = None,
    timezone: Annotated[str, typer.Option(help="IANA time zone of the rule.")] = "UTC",
    kind: Annotated[str, typer.Option(help="deny (a freeze) or allow (a deployment window).")] = "deny",
    exception: Annotated[list[str] | None, typer.Option(help="Principal id allowed to override; repeat.")] = None,
) -> None:
    """Add a freeze window: one-off (--start/--end) or recurring (--rrule/--duration)."""
    body: dict[str, Any] = {"kind": kind, "reason": reason, "timezone": timezone, "exceptions": exception or []}
    for key, value in (("start", start), ("end", end), ("rrule", rrule), ("duration_s", duration)):
        if value is not None:
            body[key] = value.isoformat() if isinstance(value, datetime) else value
    with _api() as api:
        show(api.post(f"/environments/{resolve_env(api, env)}/freeze-windows", body), STATE.output, WINDOW_COLUMNS)


@freeze_app.command("list")
@handled
def freeze_list(env: str) -> None:
    """List an environment's windows."""
    with _api() as api:
        show(
            {"items": _items(api, f"/environments/{resolve_env(api, env)}/freeze-windows")},
            STATE.output,
            WINDOW_COLUMNS,
        )


@freeze_app.command("remove")
@handled
def freeze_remove(env: str, window_id: str) -> None:
    """Remove a window."""
    with _api() as api:
        api.request("DELETE", f"/environments/{resolve_env(api, env)}/freeze-windows/{window_id}")
    err.print("Removed.")


# --- promotions -----------------------------------------------------------------------------------------


@app.command()
@handled
def promote(
    release: str,
    env: str,
    reason: Annotated[str, typer.Option(help="Why (recorded in the evidence).")] = "",
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow it live until it ends; exit 0 only when it succeeds.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 3600.0,
) -> None:
    """Promote a release (name or id) into an environment (name or id)."""
    with _api() as api:
        body = {
            "release_id": resolve_release(api, release),
            "target_environment_id": resolve_env(api, env),
            "reason": reason,
        }
        promotion = api.post("/promotions", body)
        if not wait:
            show(promotion, STATE.output, PROMOTION_COLUMNS)
            return
        # The live view goes to standard error when standard output is for JSON.
        view = out if STATE.output == Output.TABLE else err
        final = follow.follow(api, promotion["id"], timeout_s=timeout, console=view)
        if final is None:
            err.print(
                f"[bold red]Timed out[/bold red] after {timeout:g}s; the promotion goes on: stella promotions get {promotion['id']}"
            )
            raise typer.Exit(EXIT_TIMEOUT)
        if STATE.output == Output.JSON:
            emit_json(final.promotion)
        if not final.succeeded():
            err.print(f"[bold red]Promotion {final.status}[/bold red]: {final.promotion.get('status_message') or ''}")
            raise typer.Exit(EXIT_FAILED)
        err.print(f"[bold green]Promotion {final.status}.[/bold green]")


@promotions_app.command("list")
@handled
def promotions_list(status: Annotated[str | None, typer.Option()] = None) -> None:
    """List promotions, newest first."""
    with _api() as api:
        show(api.get("/promotions", status=status, page_size=100), STATE.output, PROMOTION_COLUMNS)


@promotions_app.command("get")
@handled
def promotions_get(promotion: str) -> None:
    """Show a promotion and why it is where it is."""
    with _api() as api:
        show(api.get(f"/promotions/{promotion}"), STATE.output, (*PROMOTION_COLUMNS, "reason_codes", "workflow_run_id"))


def _vote(promotion: str, action: str, comment: str) -> None:
    with _api() as api:
        request = api.post(f"/promotions/{promotion}/{action}", {"comment": comment})
    if STATE.output == Output.JSON:
        emit_json(request)
        return
    approved = len({v["approver_id"] for v in request.get("votes", []) if v.get("action") == "approved"})
    out.print(f"{action}d: {request['status']} ({approved} of {request['required']} approvals)")


@app.command()
@handled
def approve(promotion: str, comment: Annotated[str, typer.Option()] = "") -> None:
    """Approve a promotion waiting for approvals."""
    _vote(promotion, "approve", comment)


@app.command()
@handled
def reject(promotion: str, comment: Annotated[str, typer.Option(help="Why (recorded in the evidence).")]) -> None:
    """Reject a promotion waiting for approvals."""
    _vote(promotion, "reject", comment)


# --- evidence -------------------------------------------------------------------------------------------


@evidence_app.command("export")
@handled
def evidence_export(
    output_file: Annotated[Path, typer.Option("--file", "-f", help="Where to write the bundle.")] = Path(
        "evidence.tar.gz"
    ),
    since: Annotated[datetime | None, typer.Option("--from", help="Packets created at or after (with offset).")] = None,
    until: Annotated[datetime | None, typer.Option("--to", help="Packets created before (with offset).")] = None,
) -> None:
    """Download a verifiable bundle of the tenant's evidence (signed packets, public keys, manifest)."""
    params = {"from": since.isoformat() if since else None, "to": until.isoformat() if until else None}
    partial = output_file.with_name(output_file.name + ".part")
    with _api() as api, partial.open("wb") as handle:
        progress = Progress(TextColumn("exporting"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=err)
        with progress:
            task = progress.add_task("export", total=None)
            for total, chunk in api.download("/evidence/export", params):
                progress.update(task, total=total, advance=len(chunk))
                handle.write(chunk)
    partial.replace(output_file)
    err.print(
        f"Wrote {output_file} ({output_file.stat().st_size} bytes). Verify it offline: stella evidence verify {output_file}"
    )


@evidence_app.command("verify", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def evidence_verify(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Argument(help="An exported bundle (.tar.gz).")],
) -> None:
    """Verify a bundle offline: every signature, content hash and chain link (no server needed).

    Other options (--keys DIR ...) go to the evidence verifier; exit 0 only when everything holds.
    """
    from stella.evidence import verify

    argv = [str(bundle), *ctx.args]
    if STATE.output == Output.JSON and "--json" not in argv:
        argv.append("--json")
    raise typer.Exit(verify.main(argv, stdout=sys.stdout, stderr=sys.stderr))


# --- events ---------------------------------------------------------------------------------------------


@events_app.command("tail")
@handled
def events_tail(
    event_type: Annotated[
        list[str] | None, typer.Option("--type", "-t", help="Only this type (or org.stellaops.<context>.*); repeat.")
    ] = None,
    resource: Annotated[str | None, typer.Option(help="Only events about <kind>/<id>, e.g. promotions/<id>.")] = None,
    from_start: Annotated[bool, typer.Option("--from-start", help="Replay every event still kept first.")] = False,
    last_event_id: Annotated[str | None, typer.Option(help="Resume after this event id.")] = None,
    count: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
) -> None:
    """Follow the tenant's public events live (CloudEvents), reconnecting after a drop without losing any."""
    resume = "0" if from_start else last_event_id
    seen = 0
    with _api() as api:
        try:
            for item in api.events(types=event_type, resource=resource, last_event_id=resume):
                if STATE.output == Output.JSON:
                    sys.stdout.write(f'{{"id": "{item.id}", "event": {_compact(item.event)}}}\n')
                    sys.stdout.flush()
                else:
                    event = item.event
                    out.print(
                        f"[dim]{item.id:>6}[/dim] {event.get('time', '')} [bold]{item.type}[/bold] {event.get('subject', '')}"
                    )
                seen += 1
                if count is not None and seen >= count:
                    return
        except KeyboardInterrupt:
            return


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def main() -> None:
    """The console script."""
    try:
        app()
    except httpx.HTTPError as exc:  # pragma: no cover (a transport error outside a command's handling)
        err.print(f"[bold red]Error:[/bold red] {exc}")
        sys.exit(EXIT_UNREACHABLE)
