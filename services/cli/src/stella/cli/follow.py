"""``stella promote --wait``: follow a promotion until it ends, with a live view of its workflow's steps.

The view is refreshed when the promotion's public events arrive on the live stream (a background reader) and
at least every ``poll_s`` seconds otherwise, reading the promotion, its workflow run and the run's template
through the API. The promotion has ended when it reaches a final state, or when its workflow run has ended
and it is neither waiting on gates or approvals nor deploying (a promotion whose workflow has no deploy step
rests in ``approved``; a deploying one moves on when its deployment job's outcome reaches the promotion
service, which may be after the run's last step). It succeeded when it was deployed, or approved by a
workflow that succeeded.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from stella.cli.api import Api, ApiError, Unreachable
from stella.cli.config import Profile

FINAL: Final[frozenset[str]] = frozenset({"deployed", "rejected", "cancelled", "failed", "rolled_back"})
"""Promotion states nothing moves on from."""

WAITING: Final[frozenset[str]] = frozenset({"pending_gate", "pending_approval"})
"""Promotion states that wait on gates or approvals."""

MOVING: Final[frozenset[str]] = WAITING | {"deploying"}
"""Promotion states that move on by themselves, whatever their workflow run's state."""

RUN_ENDED: Final[frozenset[str]] = frozenset({"succeeded", "failed", "cancelled"})
"""Workflow run states that are final."""

_STYLE: Final[dict[str, str]] = {
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
    "skipped": "dim",
    "running": "cyan",
    "waiting": "magenta",
    "pending": "dim",
}


@dataclass
class Snapshot:
    """What is known of a promotion now."""

    promotion: dict[str, Any]
    run: dict[str, Any] | None = None
    nodes: list[str] = field(default_factory=list)
    approvals: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        return str(self.promotion.get("status"))

    @property
    def run_status(self) -> str | None:
        return None if self.run is None else str(self.run.get("status"))

    def ended(self) -> bool:
        """Whether the promotion will not move any more."""
        return self.status in FINAL or (self.run_status in RUN_ENDED and self.status not in MOVING)

    def succeeded(self) -> bool:
        """Whether it ended well: deployed, or approved by a successful workflow."""
        return self.status == "deployed" or (self.status == "approved" and self.run_status == "succeeded")

    def steps(self) -> list[tuple[str, dict[str, Any] | None]]:
        """Each node of the workflow with its latest attempt (None while it has not started)."""
        latest: dict[str, dict[str, Any]] = {}
        for step in (self.run or {}).get("steps", []):
            current = latest.get(step["node_id"])
            if current is None or step.get("attempt_number", 0) >= current.get("attempt_number", 0):
                latest[step["node_id"]] = step
        order = self.nodes or list(latest)
        return [(node, latest.get(node)) for node in order] + [
            (node, step) for node, step in latest.items() if node not in order
        ]


def _duration(step: dict[str, Any]) -> str:
    started, completed = step.get("started_at"), step.get("completed_at")
    if not started:
        return ""
    end = datetime.fromisoformat(completed) if completed else datetime.now(datetime.fromisoformat(started).tzinfo)
    return f"{(end - datetime.fromisoformat(started)).total_seconds():.1f}s"


def render(snapshot: Snapshot) -> Group:
    """The live view of a snapshot: the promotion's state, a progress bar over its steps, the steps."""
    p = snapshot.promotion
    header = Text.assemble(
        ("promotion ", "dim"),
        (str(p.get("id")), "bold"),
        f"  {p.get('release_name')} -> {p.get('target_environment_name')}  ",
        (
            snapshot.status,
            "bold green" if snapshot.succeeded() else "bold red" if snapshot.status in FINAL else "bold cyan",
        ),
    )
    lines: list[Any] = [header]
    if p.get("status_message"):
        lines.append(Text(f"  {p['status_message']}", style="dim"))
    if snapshot.approvals is not None and snapshot.status == "pending_approval":
        approved = len({v["approver_id"] for v in snapshot.approvals.get("votes", []) if v.get("action") == "approved"})
        lines.append(Text(f"  approvals: {approved} of {snapshot.approvals.get('required')}", style="magenta"))
    steps = snapshot.steps()
    done = sum(
        1
        for _, step in steps
        if step is not None and step.get("status") in ("succeeded", "skipped", "failed", "cancelled")
    )
    progress = Progress(TextColumn("  steps"), BarColumn(), MofNCompleteColumn(), auto_refresh=False)
    progress.add_task("steps", total=max(len(steps), 1), completed=done)
    lines.append(progress)
    table = Table(box=None, pad_edge=False, show_header=True, header_style="dim")
    for column in ("step", "status", "attempt", "time", "detail"):
        table.add_column(column)
    for node, step in steps:
        if step is None:
            table.add_row(node, Text("pending", style="dim"), "", "", "")
            continue
        status = str(step.get("status"))
        table.add_row(
            node,
            Text(status, style=_STYLE.get(status, "")),
            str(step.get("attempt_number", "")),
            _duration(step),
            (step.get("error") or "")[:80],
        )
    lines.append(table)
    return Group(*lines)


class Wakeup:
    """Wakes the follower when the promotion's events arrive on the live stream."""

    def __init__(self, profile: Profile, promotion_id: str) -> None:
        self._event = threading.Event()
        self._api = Api(profile)
        self._thread = threading.Thread(target=self._read, args=(promotion_id,), daemon=True, name="stella-events")

    def _read(self, promotion_id: str) -> None:
        try:
            for _ in self._api.events(resource=f"promotions/{promotion_id}"):
                self._event.set()
        except Exception:  # noqa: S110 (the follower polls anyway; the stream only makes it prompter)
            pass

    def start(self) -> None:
        self._thread.start()

    def wait(self, timeout: float) -> None:
        self._event.wait(timeout)
        self._event.clear()

    def stop(self) -> None:
        self._api.close()  # ends the reader's request


def snapshot(api: Api, promotion_id: str, templates: dict[tuple[str, int], list[str]]) -> Snapshot:
    """Read the promotion, its run and (once) its template through the API."""
    promotion = api.get(f"/promotions/{promotion_id}")
    shot = Snapshot(promotion)
    run_id = promotion.get("workflow_run_id")
    if run_id:
        try:
            shot.run = api.get(f"/workflow-runs/{run_id}")
        except ApiError as exc:
            if exc.status != 404:  # the run may not have started yet
                raise
    if shot.run is not None:
        key = (shot.run["template_name"], int(shot.run["template_version"]))
        if key not in templates:
            template = api.get(f"/workflow-templates/{key[0]}", version=key[1])
            templates[key] = [node["id"] for node in template.get("nodes", [])]
        shot.nodes = templates[key]
    if shot.status == "pending_approval":
        try:
            shot.approvals = api.get(f"/promotions/{promotion_id}/approvals")
        except ApiError:
            shot.approvals = None
    return shot


def follow(api: Api, promotion_id: str, *, timeout_s: float, console: Console, poll_s: float = 1.0) -> Snapshot | None:
    """Follow a promotion until it ends (its last snapshot) or ``timeout_s`` passes (None).

    The view is drawn on ``console``: redrawn in place on a terminal, printed once at the end otherwise.

    Raises:
        ApiError: the API refused a read.
        Unreachable: the API stopped answering.
    """
    templates: dict[tuple[str, int], list[str]] = {}
    wakeup = Wakeup(api.profile, promotion_id)
    wakeup.start()
    deadline = time.monotonic() + timeout_s
    current = snapshot(api, promotion_id, templates)
    try:
        with Live(
            render(current), console=console, refresh_per_second=4, transient=False, auto_refresh=console.is_terminal
        ) as view:
            while not current.ended():
                if time.monotonic() >= deadline:
                    return None
                wakeup.wait(min(poll_s, max(0.0, deadline - time.monotonic())))
                try:
                    current = snapshot(api, promotion_id, templates)
                except Unreachable:
                    continue  # the next round tries again until the deadline
                view.update(render(current), refresh=True)
        return current
    finally:
        wakeup.stop()
