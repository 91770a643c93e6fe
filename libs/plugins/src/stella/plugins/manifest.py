"""The plugin manifest: ``stella-plugin.toml`` (or ``stella-plugin.json``) at the root of a plugin's directory.

Example::

    id = "change-ticket"
    version = "1.0.0"
    vendor = "Stella"
    description = "Allows a promotion only when its change ticket is approved."
    capabilities = ["gate"]
    entrypoint = "plugin.py"
    permissions = ["network"]

    [config_schema]
    type = "object"
    required = ["url"]
    properties = { url = { type = "string" } }

``entrypoint`` is a file inside the plugin's directory: a ``.py`` file runs with the service's own Python
interpreter in isolated mode (``python -I``), anything else must be an executable. Parsing is strict: an
unknown field, an unknown capability, a missing entrypoint or a config schema that is not a valid JSON Schema
each raise a specific :class:`~stella.plugins.errors.ManifestError`.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stella.plugins.errors import ManifestError, MissingEntrypoint, UnknownCapability

MANIFEST_NAMES: Final[tuple[str, ...]] = ("stella-plugin.toml", "stella-plugin.json")
"""The file names a plugin's manifest may have, in the order they are looked for."""

MAX_MANIFEST_BYTES: Final = 256 * 1024
"""The largest manifest file read."""


class Capability(StrEnum):
    """What a plugin offers."""

    GATE = "gate"
    """A gate type: answers ``gate.evaluate`` with a verdict on a promotion."""
    STEP = "step"
    """A workflow step type: answers ``step.execute`` with the step's outputs."""
    AGENT_DRIVER = "agent-driver"
    """A deployment target type driven by the agent."""
    CONNECTOR = "connector"
    """An integration type (registry, SCM, CI...)."""


class Permission(StrEnum):
    """What a plugin declares it needs beyond computing its answer (shown to the operator who installs it)."""

    NETWORK = "network"
    """Makes outbound network connections."""
    EXECUTE = "execute"
    """Starts other programs."""
    FILESYSTEM = "filesystem"
    """Reads files outside its own directory."""


_ID: Final = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
_VERSION: Final = re.compile(r"^\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?$")


class Manifest(BaseModel):
    """A plugin's manifest as written (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=2, max_length=63)
    """Unique id of the plugin (lowercase words joined by dashes); gates and steps name the plugin by it."""
    version: str = Field(max_length=64)
    """Semantic version (``1.2.3``)."""
    vendor: str = Field(min_length=1, max_length=200)
    """Who publishes the plugin."""
    description: str = Field(default="", max_length=2000)
    """What the plugin does."""
    capabilities: tuple[Capability, ...] = Field(min_length=1, max_length=4)
    """What the plugin offers (at least one)."""
    entrypoint: str = Field(min_length=1, max_length=255)
    """The file run for each call, relative to the plugin's directory."""
    config_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    """JSON Schema of the configuration a gate or step gives the plugin."""
    permissions: tuple[Permission, ...] = ()
    """What the plugin needs beyond computing (see :class:`Permission`)."""

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError("must be lowercase letters and digits in words joined by single dashes")
        return value

    @field_validator("version")
    @classmethod
    def _check_version(cls, value: str) -> str:
        if not _VERSION.match(value):
            raise ValueError("must be a semantic version such as 1.2.3")
        return value

    @field_validator("capabilities", "permissions")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("must not name the same value twice")
        return value

    @field_validator("config_schema")
    @classmethod
    def _check_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            jsonschema.Draft202012Validator.check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"is not a valid JSON Schema: {exc.message}") from None
        return value

    def offers(self, capability: Capability | str) -> bool:
        """Whether the plugin offers ``capability``."""
        return capability in self.capabilities

    def config_errors(self, config: Mapping[str, Any]) -> list[str]:
        """Why ``config`` does not satisfy the plugin's config schema (empty when it does)."""
        validator = jsonschema.Draft202012Validator(self.config_schema)
        errors = sorted(validator.iter_errors(dict(config)), key=lambda e: list(map(str, e.absolute_path)))
        return [f"{'/'.join(map(str, e.absolute_path)) or '(config)'}: {e.message}" for e in errors]


def parse_manifest(data: Mapping[str, Any]) -> Manifest:
    """Validate a manifest's content.

    Raises:
        UnknownCapability: a capability is not one of :class:`Capability`.
        MissingEntrypoint: no ``entrypoint`` (or an empty one).
        ManifestError: any other problem (unknown field, bad id or version, invalid config schema...).
    """
    if not isinstance(data, Mapping):
        raise ManifestError("a plugin manifest must be an object")
    try:
        return Manifest.model_validate(dict(data))
    except ValidationError as exc:
        raise _manifest_error(exc, data) from None


def _manifest_error(exc: ValidationError, data: Mapping[str, Any]) -> ManifestError:
    problems = []
    for error in exc.errors():
        loc = error["loc"]
        where = ".".join(map(str, loc)) or "manifest"
        if loc and loc[0] == "capabilities" and error["type"] == "enum":
            known = ", ".join(c.value for c in Capability)
            return UnknownCapability(f"unknown capability {error['input']!r} (known: {known})")
        if loc == ("entrypoint",) and (error["type"] == "missing" or not data.get("entrypoint")):
            return MissingEntrypoint("the manifest names no entrypoint (the file run for each call)")
        problems.append(f"{where}: {error['msg']}")
    return ManifestError("invalid plugin manifest: " + "; ".join(problems))


@dataclass(frozen=True)
class InstalledPlugin:
    """A plugin found on the plugin path: its manifest, its directory and the program each call runs.

    Attributes:
        manifest: The validated manifest.
        directory: The plugin's directory (the working directory of its process).
        program: The entrypoint's resolved path.
    """

    manifest: Manifest
    directory: Path
    program: Path

    @property
    def id(self) -> str:
        """The plugin's id."""
        return self.manifest.id


def manifest_file(directory: Path) -> Path | None:
    """The manifest file of ``directory``, or None when it holds none."""
    for name in MANIFEST_NAMES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def load_plugin(directory: Path) -> InstalledPlugin:
    """Read and check the plugin in ``directory``.

    Raises:
        ManifestError: no manifest, an unreadable or invalid one (see :func:`parse_manifest`).
        MissingEntrypoint: the entrypoint is not a file inside the directory, or a non-Python one is not
            executable.
    """
    directory = directory.resolve()
    path = manifest_file(directory)
    if path is None:
        raise ManifestError(f"{directory} holds no {' or '.join(MANIFEST_NAMES)}")
    raw = path.read_bytes()
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        data = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} cannot be parsed: {exc}") from None
    manifest = parse_manifest(data)
    program = (directory / manifest.entrypoint).resolve()
    if not program.is_relative_to(directory) or not program.is_file():
        raise MissingEntrypoint(f"entrypoint {manifest.entrypoint!r} is not a file inside {directory}")
    if program.suffix != ".py" and not os.access(program, os.X_OK):
        raise MissingEntrypoint(f"entrypoint {manifest.entrypoint!r} is not executable")
    return InstalledPlugin(manifest=manifest, directory=directory, program=program)
