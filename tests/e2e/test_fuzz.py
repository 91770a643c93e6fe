"""A bounded schemathesis run against the whole system: no server error, and every answer as documented.

Every operation of the gateway's OpenAPI document is called with generated requests, valid ones and ones
that break the schema, with a tenant admin's token. The run fails on any 5xx except an honest 503 naming an
unreachable dependency (a generated image repository's registry), and on any response whose status, media
type or body the document does not describe. It is bounded: a fixed number of examples per operation,
without shrinking, so it takes minutes whatever it finds.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from nats.aio.client import Client
from schemathesis.checks import content_type_conformance, response_schema_conformance, status_code_conformance
from schemathesis.generation import GenerationMode

from .conftest import HEADLESS, Stack, _running

# Every operation twice (valid, schema-breaking) for EXAMPLES_PER_MODE requests: minutes on a busy machine.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

EXAMPLES_PER_MODE = int(os.environ.get("STELLA_FUZZ_EXAMPLES", "12"))
"""Generated requests per operation and generation mode (valid, schema-breaking)."""

HONEST_503: frozenset[str] = frozenset({"REL_REGISTRY_UNAVAILABLE"})
"""503 codes that name a dependency the generated input made unreachable: not a fault of the system."""

CHECKS = [response_schema_conformance, content_type_conformance, status_code_conformance]


@pytest_asyncio.fixture
async def fuzz_stack(
    monkeypatch: pytest.MonkeyPatch,
    fresh_database: str,
    nats_url: str,
    nats: Client,
    stella_namespace: str,
    unique_id: str,
    tmp_path: Path,
) -> AsyncIterator[Stack]:
    """Every service; registries named by generated repositories are given up on quickly."""
    monkeypatch.setenv("STELLA_RELEASE_REGISTRY_TIMEOUT_S", "2")
    async with _running(HEADLESS, fresh_database, nats_url, nats, stella_namespace, unique_id, tmp_path) as system:
        yield system


def _fuzz(base: str, token: str, document: dict[str, Any]) -> tuple[list[str], dict[int, int]]:
    """Run every operation; return one line per failure and how many answers had each status."""
    schema = schemathesis.openapi.from_dict(document)
    session = requests.Session()
    headers = {"Authorization": f"Bearer {token}"}
    failures: list[str] = []
    statuses: dict[int, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)

            @settings(
                max_examples=EXAMPLES_PER_MODE,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def call(case: Any) -> None:
                response = case.call(base_url=base, session=session, headers=headers, timeout=30)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                label = f"{case.operation.label} -> {response.status_code}"
                if response.status_code >= 500:
                    code = _code(response)
                    if not (response.status_code == 503 and code in HONEST_503):
                        raise AssertionError(f"{label} {code}: {response.text[:300]}")
                case.validate_response(response, checks=CHECKS, headers=headers)

            try:
                call()
            except Unsatisfiable:
                continue  # nothing of this operation can break its schema (no parameters, no body)
            except Exception as exc:
                failures.append(f"{operation.label} [{mode.value}]: {str(exc)[:1500]}")
    return failures, statuses


def _code(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return "(not JSON)"
    return str(body.get("code")) if isinstance(body, dict) else "(not a problem)"


async def test_fuzzing_the_api_finds_no_server_error_and_no_undocumented_answer(fuzz_stack: Stack) -> None:
    stack = fuzz_stack
    status, document, _ = await stack.call("GET", "/api/v1/openapi.json")
    assert status == 200
    failures, statuses = await asyncio.to_thread(_fuzz, stack.base, stack.token, document)
    assert failures == [], "\n\n".join(failures)
    # The run reached the system with both kinds of requests (a run that sent nothing proves nothing).
    assert sum(statuses.values()) > 10 * len(document["paths"]), statuses
    assert any(200 <= status < 300 for status in statuses) and any(400 <= status < 500 for status in statuses)
    # The system is still whole afterwards.
    status, ready, _ = await stack.call("GET", "/readyz")
    assert status == 200, ready
