"""Shared field types with the validation every context agrees on (names, digests, tags, repositories)."""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import StringConstraints

NAME_PATTERN: Final[str] = r"^[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?$"
"""Resource names: lower-case letters, digits, ``.``, ``_``, ``-``; 1 to 63 characters; alphanumeric ends."""

DIGEST_PATTERN: Final[str] = r"^sha256:[0-9a-f]{64}$"
"""An OCI content digest; only sha256 is accepted."""

TAG_PATTERN: Final[str] = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"
"""An OCI tag (distribution spec)."""

REPOSITORY_PATTERN: Final[str] = (
    r"^(?:[A-Za-z0-9.-]+(?::[0-9]{1,5})?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"
)
"""An image repository, optionally with a registry host and port: ``registry.example:5000/team/app``."""

SEMVER_PATTERN: Final[str] = (
    r"^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
"""Semantic version 2.0.0, with an optional leading ``v``."""

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Digest = Annotated[str, StringConstraints(pattern=DIGEST_PATTERN)]
Tag = Annotated[str, StringConstraints(pattern=TAG_PATTERN)]
Repository = Annotated[str, StringConstraints(pattern=REPOSITORY_PATTERN, max_length=255)]
Semver = Annotated[str, StringConstraints(pattern=SEMVER_PATTERN, max_length=128)]
DisplayName = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
Channel = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")]
CredentialRef = Annotated[str, StringConstraints(pattern=r"^(env|file):[A-Za-z0-9_./-]{1,255}$")]
