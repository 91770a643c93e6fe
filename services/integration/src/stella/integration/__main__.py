"""Run the integration service: ``python -m stella.integration``.

    python -m stella.integration            serve
    python -m stella.integration init-key   create the master key file (STELLA_INTEGRATION_MASTER_KEY_FILE)
                                            when it does not exist (needs no database); print its key id

Rotating the master key: write a new key file, name it in ``STELLA_INTEGRATION_MASTER_KEY_FILE`` and the old
one in ``STELLA_INTEGRATION_PREVIOUS_MASTER_KEY_FILES``, restart; every data key is re-wrapped at start.
"""

from __future__ import annotations

import os
import sys

from stella.integration.app import create_app
from stella.integration.keys import MasterKey, MasterKeyError, new_master_key
from stella.integration.settings import Settings
from stella.kit.logs import configure_logging
from stella.kit.startup import ConfigurationError, load_settings, run_process

EX_CONFIG = 78


async def serve(settings: Settings) -> None:
    """Create the app and serve until interrupted; a missing or malformed master key is a configuration error."""
    try:
        app = create_app(settings)
    except MasterKeyError as exc:
        raise ConfigurationError(str(exc)) from None
    await app.run()


def init_key(settings: Settings) -> int:
    """Create the master key file (owner-only) unless it exists; print its key id. Returns the exit code."""
    path = settings.master_key_file
    if path is None:
        print("error: STELLA_INTEGRATION_MASTER_KEY_FILE is not set", file=sys.stderr)
        return EX_CONFIG
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(new_master_key() + "\n")
            state = "created"
        else:
            state = "exists"
        key = MasterKey.parse(path.read_text(encoding="utf-8"))
    except (OSError, MasterKeyError) as exc:
        print(f"error: cannot create or read the integration master key at {path}: {exc}", file=sys.stderr)
        return EX_CONFIG
    print(f"integration master key {key.key_id} {state} at {path}")
    return 0


def main() -> None:
    """Build the settings once, wait for Postgres and NATS, and serve; exit with one line when it cannot start."""
    settings = load_settings("integration", Settings)
    if sys.argv[1:] == ["init-key"]:
        sys.exit(init_key(settings))
    configure_logging("integration", settings.log_level)
    sys.exit(run_process("integration", settings, serve))


if __name__ == "__main__":
    main()
