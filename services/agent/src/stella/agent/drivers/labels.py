"""The container labels Stella sets on what it deploys (reference §4), and the ones Compose sets."""

from __future__ import annotations

from typing import Final

TARGET: Final[str] = "stella.target.id"
"""The target the container was deployed to; how a target's containers are found."""

COMPONENT_ID: Final[str] = "stella.component.id"
"""The component's id."""

COMPONENT: Final[str] = "stella.component.name"
"""The component's name (a ``docker_host`` container's, or a Compose service's)."""

DIGEST: Final[str] = "stella.digest"
"""The digest the container was created from (informational: the running digest is read from the image)."""

RELEASE: Final[str] = "stella.release.id"
"""The release whose deployment created the container."""

DEPLOYMENT: Final[str] = "stella.deployment.id"
"""The deployment job that created the container (``docker_host``)."""

ENVIRONMENT: Final[str] = "stella.environment.id"
"""The environment of that deployment (``docker_host``)."""

CONFIG_HASH: Final[str] = "stella.config.hash"
"""SHA-256 of what defines a ``docker_host`` container; equal means nothing to change."""

COMPOSE_PROJECT: Final[str] = "com.docker.compose.project"
"""Compose's project label."""

COMPOSE_SERVICE: Final[str] = "com.docker.compose.service"
"""Compose's service label."""
