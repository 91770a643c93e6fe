"""The agent's stored credential: registered once, kept in a file only its owner can read.

The registration token is one-time; the credential the gateway answers with is shown once. Both are
secrets: the file is created with mode 0600 (never readable by another user, even for a moment) and
neither value is ever logged.
"""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from pathlib import Path
from uuid import UUID

from pydantic import Field

from stella.contracts.envelope import Model


class CredentialFileError(Exception):
    """The credential file cannot be read, or another user can read it."""


class StoredCredential(Model):
    """What an agent keeps after registering.

    Attributes:
        gateway_url: The gateway the agent registered with (a credential is only sent there).
        agent_id: The agent's id.
        name: The name it registered under.
        credential: The long-lived agent credential.
        heartbeat_interval_s: The heartbeat interval the gateway asked for.
        task_poll_timeout_s: How long one task feed request may wait.
    """

    gateway_url: str
    agent_id: UUID
    name: str
    credential: str = Field(repr=False)
    heartbeat_interval_s: float
    task_poll_timeout_s: float


def load_credential(path: Path) -> StoredCredential | None:
    """The stored credential, or None when there is none.

    Raises:
        CredentialFileError: when the file is unreadable, malformed, or readable by others than its owner.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CredentialFileError(f"cannot read {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialFileError(f"{path} is readable by other users (mode {stat.S_IMODE(mode):o}): chmod 600 it")
    try:
        return StoredCredential.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise CredentialFileError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise CredentialFileError(f"{path} does not hold an agent credential") from exc


def save_credential(path: Path, stored: StoredCredential) -> None:
    """Write the credential atomically, mode 0600 from the first byte on.

    Raises:
        CredentialFileError: when it cannot be written.
    """
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    data = stored.model_dump_json(indent=2).encode()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(descriptor, 0o600)  # whatever the umask
            os.write(descriptor, data)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise CredentialFileError(f"cannot write {path}: {exc.strerror}") from exc
