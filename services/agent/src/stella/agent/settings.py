"""The agent's settings: command-line flags over ``STELLA_AGENT_*`` environment variables over defaults.

An operator starts an agent on a host with the gateway's URL and either a one-time registration token (the
first start) or nothing more (later starts find the stored credential in the state directory)::

    stella-agent --gateway-url https://stella.example.com --registration-token stl_reg_... \\
        --name web-01 --label zone=eu-1

    STELLA_AGENT_GATEWAY_URL=https://stella.example.com STELLA_AGENT_NAME=web-01 stella-agent
"""

from __future__ import annotations

import argparse
import re
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from stella.agent.drivers.config import default_docker_url
from stella.contracts.validation import NAME_PATTERN

DEFAULT_STATE_DIR: Final[Path] = Path.home() / ".stella-agent"
"""Where an agent keeps its credential, its task journal and its targets' files unless told otherwise."""

CREDENTIAL_FILE: Final[str] = "credential.json"
"""Name of the stored credential in the state directory (mode 0600)."""

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9._-]{0,63}$")

DriverKind = Literal["engine", "simulated"]


def default_name() -> str:
    """The host's name as an agent name (lower case, invalid characters replaced), ``agent`` if none fits."""
    name = re.sub(r"[^a-z0-9._-]", "-", socket.gethostname().lower()).strip("._-")[:63]
    return name if re.match(NAME_PATTERN, name) else "agent"


def parse_labels(value: Any) -> dict[str, str]:
    """Labels from ``k=v,k2=v2`` (the environment variable), a list of ``k=v`` (flags) or a mapping."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        pairs = list(value.items())
    else:
        items = value.split(",") if isinstance(value, str) else list(value)
        pairs = []
        for item in items:
            key, sep, val = str(item).strip().partition("=")
            if not sep:
                raise ValueError(f"label {item!r} must read key=value")
            pairs.append((key.strip(), val.strip()))
    labels: dict[str, str] = {}
    for key, val in pairs:
        if not _LABEL.match(str(key)) or not _LABEL_VALUE.match(str(val)):
            raise ValueError(f"label {key}={val} is not a valid label (keys [a-z0-9._/-], values [A-Za-z0-9._-])")
        labels[str(key)] = str(val)
    return labels


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class AgentSettings(BaseSettings):
    """Everything an agent needs to know; built once in ``__main__`` and passed down."""

    model_config = SettingsConfigDict(env_prefix="STELLA_AGENT_", extra="ignore", frozen=True)

    gateway_url: str
    """Base URL of the Stella gateway (``https://stella.example.com``); the agent talks to nothing else."""

    registration_token: SecretStr | None = None
    """One-time registration token from ``POST /api/v1/agent-tokens``; needed only while no credential is stored."""

    credential_file: Path | None = None
    """Where the agent credential is kept (mode 0600); ``<state_dir>/credential.json`` when unset."""

    name: str = Field(default_factory=default_name, pattern=NAME_PATTERN)
    """The agent's name as Stella shows it; the host name by default."""

    labels: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    """Labels declared at registration (``k=v,k2=v2`` in the environment, ``--label k=v`` as flags)."""

    state_dir: Path = DEFAULT_STATE_DIR
    """The agent's own directory: credential, task journal, targets' stickers and lock files."""

    docker_url: str = Field(default_factory=default_docker_url)
    """The Docker engine targets use when their connection names none (``DOCKER_HOST`` when set)."""

    allowed_docker_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Other engines a target's connection may name (comma separated)."""

    allowed_directories: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    """Directories a Compose target's ``connection.directory`` may lie under (comma separated)."""

    health_host: str = "127.0.0.1"
    """Address of published ports for health checks on a local engine."""

    driver: DriverKind = "engine"
    """``engine``: real Docker and Compose; ``simulated``: complete every task at once (load tests only)."""

    max_concurrent_tasks: int = Field(default=4, ge=1, le=1000)
    """Tasks run at the same time; the feed is not asked for more."""

    heartbeat_interval_s: float | None = Field(default=None, gt=0, le=3600)
    """Overrides the heartbeat interval the gateway answered at registration."""

    task_poll_timeout_s: float | None = Field(default=None, gt=0, le=300)
    """Overrides how long one task feed request waits for work (the registration answer's by default)."""

    request_timeout_s: float = Field(default=30.0, gt=0, le=600)
    """Longest wait for a gateway answer (added to the long-poll wait for the task feed)."""

    max_backoff_s: float = Field(default=30.0, gt=0, le=3600)
    """Longest pause between attempts while the gateway cannot be reached."""

    log_level: str = "INFO"
    """Log level of the agent's own log (DEBUG, INFO, WARNING...)."""

    @field_validator("gateway_url")
    @classmethod
    def _check_gateway(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("gateway_url must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> dict[str, str]:
        return parse_labels(value)

    @field_validator("allowed_docker_urls", "allowed_directories", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split(value)

    @property
    def credential_path(self) -> Path:
        """The stored credential's file."""
        return self.credential_file or self.state_dir / CREDENTIAL_FILE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stella-agent",
        description="Stella deployment agent: registers with the gateway, heartbeats, runs deployment tasks. "
        "Every flag can also be set as STELLA_AGENT_<FLAG> (upper case, '-' as '_').",
    )
    parser.add_argument("--gateway-url", help="base URL of the Stella gateway")
    parser.add_argument("--registration-token", help="one-time registration token (first start only)")
    parser.add_argument("--credential-file", type=Path, help="stored credential (default <state-dir>/credential.json)")
    parser.add_argument("--name", help="agent name (default: the host name)")
    parser.add_argument("--label", action="append", dest="labels", metavar="KEY=VALUE", help="a label (repeatable)")
    parser.add_argument("--state-dir", type=Path, help=f"state directory (default {DEFAULT_STATE_DIR})")
    parser.add_argument("--docker-url", help="default Docker engine (default DOCKER_HOST or the local socket)")
    parser.add_argument("--allow-docker-url", action="append", dest="allowed_docker_urls", metavar="URL")
    parser.add_argument("--allow-directory", action="append", dest="allowed_directories", type=Path, metavar="DIR")
    parser.add_argument("--health-host", help="address of published ports for health checks")
    parser.add_argument("--driver", choices=["engine", "simulated"], help="engine (default) or simulated")
    parser.add_argument("--max-concurrent-tasks", type=int)
    parser.add_argument("--heartbeat-interval-s", type=float, help="override the gateway's heartbeat interval")
    parser.add_argument("--task-poll-timeout-s", type=float)
    parser.add_argument("--log-level")
    return parser


def load_settings(argv: Sequence[str] | None = None) -> AgentSettings:
    """Settings from flags (``argv``), then ``STELLA_AGENT_*`` variables, then defaults.

    Raises:
        SystemExit: on an unknown flag (argparse prints usage).
        pydantic.ValidationError: on an invalid or missing value.
    """
    namespace = _parser().parse_args(argv)
    given = {key: value for key, value in vars(namespace).items() if value is not None}
    return AgentSettings(**given)
