"""Files a driver leaves on the host: the target's directory, the version sticker, atomic writes.

The sticker (reference §4) is built by the deployment service and travels in the task; the agent writes it
as given, serialised one way only (sorted keys, two-space indent, UTF-8, trailing newline), so the same
sticker always gives the same bytes and the same artifact hash, and re-running a task rewrites nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any, Final, Literal

from stella.agent.drivers.config import DriverConfig
from stella.agent.drivers.errors import INVALID_TASK, STICKER_ERROR, TaskFailure
from stella.contracts.agent import STICKER_FILE, Artifact, TargetSpec, TaskResult
from stella.contracts.validation import DIGEST_PATTERN

MAX_STICKER_BYTES: Final[int] = 1_000_000
"""A sticker larger than this is not read (it cannot be one Stella wrote)."""

MAX_ARTIFACT_CONTENT: Final[int] = 1_000_000
"""Longest artifact content sent back with a result; a longer file is reported by its hash alone."""

_DIGEST_RE = re.compile(DIGEST_PATTERN)


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def target_directory(config: DriverConfig, target: TargetSpec) -> Path:
    """Return (and create) the directory holding a target's sticker and lock file.

    ``connection.directory`` when the target names one, else ``<state_dir>/targets/<target_id>``. A named
    directory must be absolute and lie, once symbolic links are resolved, under ``<state_dir>/targets`` or
    one of the operator's ``allowed_directories``: a task never chooses where on the host the agent writes.

    Args:
        config: The drivers' configuration.
        target: The task's target.

    Returns:
        The directory, created with mode 0750 when missing.

    Raises:
        TaskFailure: ``AGT_INVALID_TASK`` for a directory outside the allowed ones, ``AGT_STICKER_ERROR``
            when it cannot be created.
    """
    roots = [config.targets_dir.resolve(), *(root.resolve() for root in config.allowed_directories)]
    named = target.connection.get("directory")
    if named is None:
        directory = config.targets_dir.resolve() / str(target.target_id)
    else:
        if not isinstance(named, str) or not named.startswith("/") or "\x00" in named:
            raise TaskFailure(INVALID_TASK, "connection.directory must be an absolute path")
        directory = Path(named).resolve()
        if not any(_within(directory, root) and directory != root for root in roots):
            allowed = ", ".join(str(root) for root in roots)
            raise TaskFailure(
                INVALID_TASK, f"connection.directory {named} is outside the directories this agent may use ({allowed})"
            )
    try:
        directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:
        raise TaskFailure(STICKER_ERROR, f"cannot create {directory}: {exc.strerror}") from exc
    return directory


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> bool:
    """Write ``data`` to ``path`` so that a reader sees the old content or the new one, never a mix.

    The bytes go to a temporary file in the same directory, are flushed to disk, then renamed over
    ``path``; the directory is flushed too, so the rename survives a crash.

    Args:
        path: The file.
        data: Its new content.
        mode: Permissions of a new file.
        durable: Flush the file and its directory to disk (False: still atomic, but a crash may bring the
            old content back; for writes whose loss costs only a repeat).

    Returns:
        False when ``path`` already held exactly ``data`` (nothing was written), True otherwise.

    Raises:
        TaskFailure: ``AGT_STICKER_ERROR`` when the file cannot be written.
    """
    with contextlib.suppress(OSError):
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.write(descriptor, data)
            if durable:
                os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
        if not durable:
            return True
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise TaskFailure(STICKER_ERROR, f"cannot write {path}: {exc.strerror}") from exc
    return True


def render_sticker(sticker: dict[str, Any]) -> bytes:
    """The bytes of a sticker file: sorted keys, two-space indent, UTF-8, one trailing newline."""
    return (json.dumps(sticker, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def sticker_components(sticker: dict[str, Any]) -> list[dict[str, Any]]:
    """The components a sticker names (``release.components``), each with at least a name and a digest.

    Raises:
        ValueError: when the sticker does not name its components that way.
    """
    release = sticker.get("release")
    components = release.get("components") if isinstance(release, dict) else None
    if not isinstance(components, list):
        raise ValueError("the sticker has no release.components list")
    for component in components:
        if not isinstance(component, dict) or not isinstance(component.get("name"), str):
            raise ValueError("every release.components entry needs a name")
        if not isinstance(component.get("digest"), str) or not _DIGEST_RE.match(component["digest"]):
            raise ValueError(f"component {component.get('name')} has no sha256 digest")
    return components


def validate_sticker(sticker: dict[str, Any], target: TargetSpec) -> None:
    """Refuse a sticker the agent must not write on this target.

    Raises:
        TaskFailure: ``AGT_INVALID_TASK`` when it names no components or names another target.
    """
    try:
        sticker_components(sticker)
    except ValueError as exc:
        raise TaskFailure(INVALID_TASK, f"sticker: {exc}") from exc
    deployment = sticker.get("deployment")
    if isinstance(deployment, dict) and deployment.get("target_id") not in (None, str(target.target_id)):
        raise TaskFailure(INVALID_TASK, "the sticker names another target")


def make_artifact(kind: Literal["compose-lock", "sticker"], name: str, data: bytes) -> Artifact:
    """An artifact for a file's bytes: always its sha256, and its text when it is UTF-8 and not too long."""
    try:
        text: str | None = data.decode()
    except UnicodeDecodeError:
        text = None
    if text is not None and len(text) > MAX_ARTIFACT_CONTENT:
        text = None
    return Artifact(type=kind, name=name, content_hash=sha256_digest(data), content=text)


def write_sticker(directory: Path, sticker: dict[str, Any]) -> tuple[Artifact, bool]:
    """Write ``stella.version.json`` in ``directory`` atomically.

    Returns:
        The sticker artifact (with the sha256 of the file's bytes) and whether the file changed.
    """
    data = render_sticker(sticker)
    changed = write_atomic(directory / STICKER_FILE, data)
    return make_artifact("sticker", STICKER_FILE, data), changed


class StickerUnreadable(Exception):
    """A sticker file exists but is not a JSON object Stella could have written."""


def read_sticker(directory: Path) -> tuple[dict[str, Any], Artifact] | None:
    """Read ``stella.version.json`` from ``directory``.

    Returns:
        The sticker and its artifact (hash of the file's bytes as found), or None when there is none.

    Raises:
        StickerUnreadable: when the file is too large, not UTF-8 JSON, or not an object.
    """
    path = directory / STICKER_FILE
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_STICKER_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StickerUnreadable(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > MAX_STICKER_BYTES:
        raise StickerUnreadable(f"{path} is larger than {MAX_STICKER_BYTES} bytes")
    try:
        sticker = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StickerUnreadable(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(sticker, dict):
        raise StickerUnreadable(f"{path} does not hold a JSON object")
    return sticker, make_artifact("sticker", STICKER_FILE, data)


JOURNAL_DIR: Final[str] = ".stella-tasks"
"""Directory, in a target's directory, of the results of tasks that succeeded there, by idempotency key."""

MAX_JOURNAL_ENTRIES: Final[int] = 500
"""Results kept per target; the oldest go first."""


def _journal_entry(directory: Path, idempotency_key: str) -> Path:
    return directory / JOURNAL_DIR / (hashlib.sha256(idempotency_key.encode()).hexdigest() + ".json")


def recall_result(directory: Path, idempotency_key: str) -> TaskResult | None:
    """The result of a task with this idempotency key that succeeded on this target, if one did."""
    try:
        return TaskResult.model_validate_json(_journal_entry(directory, idempotency_key).read_bytes())
    except (OSError, ValueError):
        return None


def remember_result(directory: Path, result: TaskResult) -> None:
    """Record a successful result under its idempotency key, keeping the newest :data:`MAX_JOURNAL_ENTRIES`."""
    entry = _journal_entry(directory, result.idempotency_key)
    try:
        entry.parent.mkdir(mode=0o750, exist_ok=True)
    except OSError as exc:
        raise TaskFailure(STICKER_ERROR, f"cannot create {entry.parent}: {exc.strerror}") from exc
    write_atomic(entry, result.model_dump_json().encode(), mode=0o640)
    entries = sorted(entry.parent.glob("*.json"), key=lambda path: path.stat().st_mtime_ns)
    for old in entries[: max(0, len(entries) - MAX_JOURNAL_ENTRIES)]:
        with contextlib.suppress(OSError):
            old.unlink()
