"""The stable failure codes a driver reports, and the exception that carries one to the task's result."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from stella.contracts.agent import ComponentState

DIGEST_MISMATCH: Final[str] = "AGT_DIGEST_MISMATCH"
"""The image pulled for ``repo@sha256:...`` is not that digest; nothing was started or stopped."""

PULL_FAILED: Final[str] = "AGT_PULL_FAILED"
"""An image could not be pulled (registry down, unknown digest, refused credentials)."""

HEALTH_CHECK_FAILED: Final[str] = "AGT_HEALTH_CHECK_FAILED"
"""What was deployed (or runs) did not pass its health check."""

DOCKER_ERROR: Final[str] = "AGT_DOCKER_ERROR"
"""The engine refused an operation or does not answer."""

COMPOSE_ERROR: Final[str] = "AGT_COMPOSE_ERROR"
"""Compose failed or is not installed."""

UNSUPPORTED: Final[str] = "AGT_UNSUPPORTED"
"""A task or target type this driver cannot run."""

TIMEOUT: Final[str] = "AGT_TIMEOUT"
"""The task did not finish within its ``timeout_s``."""

INVALID_TASK: Final[str] = "AGT_INVALID_TASK"
"""The task cannot be run as given (a directory or engine the agent does not allow, a sticker without components...)."""

STICKER_ERROR: Final[str] = "AGT_STICKER_ERROR"
"""The sticker (or lock file) could not be written on the host."""


class TaskFailure(Exception):
    """An expected failure of a task: becomes a failed result with ``code`` and ``message``.

    Args:
        code: One of the ``AGT_*`` codes of this module.
        message: One line for a person; never a secret.
        components: What runs per component when the failure was found (a failed health check says
            which component failed).
    """

    def __init__(self, code: str, message: str, components: Sequence[ComponentState] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.components = list(components)
