"""Where the CLI keeps the API's URL and the token: one file in the user's config directory, mode 0600.

``stella login`` writes it; every other command reads it. ``STELLA_URL`` and ``STELLA_TOKEN`` override it (CI
jobs need no file), and ``STELLA_CONFIG_DIR`` moves it (tests, several installations).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import typer

APP_NAME: Final[str] = "stella"
FILE_NAME: Final[str] = "config.json"


class NotLoggedIn(Exception):
    """No URL or token is known."""


@dataclass(frozen=True)
class Profile:
    """The API to talk to and the token to talk with."""

    url: str
    token: str


def config_dir() -> Path:
    """The CLI's config directory (``$STELLA_CONFIG_DIR``, else the platform's user config directory)."""
    override = os.environ.get("STELLA_CONFIG_DIR")
    return Path(override) if override else Path(typer.get_app_dir(APP_NAME))


def config_file() -> Path:
    """The file holding the profile."""
    return config_dir() / FILE_NAME


def save(profile: Profile) -> Path:
    """Write ``profile`` readable by the user only (the token is a credential); returns the file."""
    directory = config_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / FILE_NAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o600)  # an existing file keeps its mode on open: set it
        json.dump({"url": profile.url, "token": profile.token}, handle)
    return path


def forget() -> bool:
    """Remove the stored profile; False when there was none."""
    try:
        config_file().unlink()
    except FileNotFoundError:
        return False
    return True


def load(url: str | None = None, token: str | None = None) -> Profile:
    """The profile: explicit values, else ``STELLA_URL`` / ``STELLA_TOKEN``, else the stored file.

    Raises:
        NotLoggedIn: when no URL or no token is known.
    """
    stored: dict[str, str] = {}
    path = config_file()
    if path.exists():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stored = {}
    url = url or os.environ.get("STELLA_URL") or stored.get("url")
    token = token or os.environ.get("STELLA_TOKEN") or stored.get("token")
    if not url or not token:
        raise NotLoggedIn("not logged in: run `stella login --url URL` (or set STELLA_URL and STELLA_TOKEN)")
    return Profile(url=url.rstrip("/"), token=token)
