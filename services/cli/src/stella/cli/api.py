"""The public HTTP API as the CLI uses it: JSON in and out, problem details as errors, the live event stream.

Every POST carries a fresh ``Idempotency-Key`` and is repeated with it when the API answers 503 (a command
still queued, a service restarting) or the connection drops, so a retried command has one effect.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import httpx

from stella.cli.config import Profile

API: Final[str] = "/api/v1"
RETRIES: Final[int] = 4


@dataclass
class ApiError(Exception):
    """An error answer of the API (RFC 9457 problem details), or no answer at all."""

    status: int
    code: str
    title: str
    detail: str = ""
    errors: list[dict[str, Any]] = field(default_factory=list)
    trace_id: str | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.detail or self.title}"

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """Read a problem response (or make one of a response that is not one)."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "code" not in body:
            return cls(
                response.status_code, f"HTTP_{response.status_code}", response.reason_phrase, response.text[:500]
            )
        return cls(
            status=int(body.get("status", response.status_code)),
            code=str(body["code"]),
            title=str(body.get("title", "")),
            detail=str(body.get("detail", "")),
            errors=list(body.get("errors") or []),
            trace_id=body.get("trace_id") or response.headers.get("x-trace-id"),
        )


class Unreachable(Exception):
    """The API did not answer."""


@dataclass(frozen=True)
class StreamEvent:
    """One event of the live stream."""

    id: str
    type: str
    event: dict[str, Any]


class Api:
    """A client of one Stella API with one token.

    Args:
        profile: URL and token.
        timeout_s: Seconds one request may take.
        transport: An httpx transport (tests).
    """

    def __init__(
        self, profile: Profile, *, timeout_s: float = 30.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.profile = profile
        self._http = httpx.Client(
            base_url=profile.url,
            headers={"Authorization": f"Bearer {profile.token}", "User-Agent": "stella-cli/0.1"},
            timeout=timeout_s,
            transport=transport,
        )

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, *, json_body: Any = None, params: Any = None) -> Any:
        """Call ``{API}{path}`` and return the decoded answer (None for an empty one).

        Raises:
            ApiError: the API's problem.
            Unreachable: no answer after the retries.
        """
        headers = {"Idempotency-Key": uuid.uuid4().hex} if method == "POST" else {}
        for attempt in range(RETRIES + 1):
            try:
                response = self._http.request(method, API + path, json=json_body, params=params, headers=headers)
            except httpx.TransportError as exc:
                if attempt == RETRIES or (method != "GET" and not headers):
                    raise Unreachable(f"cannot reach {self.profile.url}: {exc}") from exc
                time.sleep(min(8.0, 0.5 * 2**attempt))
                continue
            if response.status_code == 503 and attempt < RETRIES and (method == "GET" or headers):
                time.sleep(min(8.0, float(response.headers.get("retry-after", "1") or 1)))
                continue
            if response.status_code >= 400:
                raise ApiError.from_response(response)
            if not response.content:
                return None
            return response.json()
        raise AssertionError("unreachable")

    def get(self, path: str, **params: Any) -> Any:
        """GET with query parameters (None values left out)."""
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        """POST a JSON body."""
        return self.request("POST", path, json_body=body)

    def download(self, path: str, params: dict[str, Any]) -> Iterator[tuple[int | None, bytes]]:
        """Stream a download: yields (total size if known, chunk).

        Raises:
            ApiError: the API's problem.
        """
        with self._http.stream(
            "GET", API + path, params={k: v for k, v in params.items() if v is not None}
        ) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError.from_response(response)
            length = response.headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
            for chunk in response.iter_bytes():
                yield total, chunk

    def events(
        self, *, types: list[str] | None = None, resource: str | None = None, last_event_id: str | None = None
    ) -> Iterator[StreamEvent]:
        """Follow the live stream, reconnecting after a drop with the id of the last event received.

        Raises:
            ApiError: the API refused the stream (a bad filter, an expired id).
        """
        params: list[tuple[str, str | int | float | bool | None]] = [("type", t) for t in types or []]
        if resource:
            params.append(("resource", resource))
        failures = 0
        while True:
            headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
            try:
                with self._http.stream(
                    "GET",
                    API + "/events/stream",
                    params=params,
                    headers=headers,
                    timeout=httpx.Timeout(30.0, read=90.0),
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise ApiError.from_response(response)
                    failures = 0
                    for item in _parse_sse(response.iter_lines()):
                        last_event_id = item.id
                        yield item
            except (httpx.TransportError, httpx.StreamError) as exc:
                failures += 1
                if failures > 20:
                    raise Unreachable(f"the event stream keeps failing: {exc}") from exc
                time.sleep(min(10.0, 0.5 * 2 ** min(failures, 5)))


def _parse_sse(lines: Iterator[str]) -> Iterator[StreamEvent]:
    fields: dict[str, str] = {}
    data: list[str] = []
    for line in lines:
        if line == "":
            if data and "id" in fields:
                event = json.loads("\n".join(data))
                yield StreamEvent(fields["id"], fields.get("event", event.get("type", "")), event)
            fields, data = {}, []
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "data":
                data.append(value)
            else:
                fields[key] = value
