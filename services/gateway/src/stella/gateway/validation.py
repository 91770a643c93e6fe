"""The one validation layer of the gateway: what no service or database would accept is refused at the door.

Every route gets these rules without doing anything; a new route gets them too:

* **Media type.** A request that carries a body must say ``Content-Type: application/json`` (or another
  ``+json`` type, UTF-8 only): anything else, or no type at all, is 415 ``VAL_UNSUPPORTED_MEDIA_TYPE``.
* **JSON shape** (:func:`check_json`). The body must be one JSON document (400 ``VAL_MALFORMED_JSON``),
  nested at most :data:`MAX_DEPTH` levels (400 ``VAL_TOO_DEEP``), without repeated keys, ``NaN`` or
  ``Infinity``; its integers fit in 64 bits and its numbers are finite (400 ``VAL_NUMBER_OUT_OF_RANGE``);
  no string or key holds NUL, another control character (tab, line feed and carriage return excepted) or
  an unpaired surrogate, which Postgres refuses or cannot store (400 ``VAL_INVALID_CHARACTER``).
* **Query strings and paths** follow the same character rule (400 ``VAL_INVALID_CHARACTER``).
* **Strict types** (:class:`StrictBodyPlugin`). Request bodies (:class:`~stella.gateway.schemas.RequestBody`)
  are validated by pydantic in strict JSON mode: ``0`` is not ``false``, ``"0"`` is not ``0``, ``true`` is
  not ``1`` and a number is not a time. Field errors name the field as ``["body", ...]``.
* **Ranges** are the schemas' business: every integer field states bounds that fit its column (the
  OpenAPI document publishes them), and page tokens are bound to the list that issued them.

Every refusal is an RFC 9457 problem with field errors, rendered by :mod:`stella.gateway.problems`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import parse_qsl

import msgspec
from litestar import Request
from litestar.config.app import AppConfig
from litestar.enums import ScopeType
from litestar.plugins import InitPluginProtocol
from litestar.types import ASGIApp, Receive, Scope, Send
from pydantic import BaseModel, ValidationError

from stella.gateway.problems import ProblemError, pydantic_errors

MAX_DEPTH: Final[int] = 32
"""Deepest nesting of arrays and objects accepted in a request body."""

INT64_MIN: Final[int] = -(2**63)
INT64_MAX: Final[int] = 2**63 - 1
INT32_MAX: Final[int] = 2**31 - 1
"""Bounds of the integer column types; schema fields stored in an ``integer`` column use :data:`INT32_MAX`."""

FORBIDDEN_CHARACTERS: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
"""NUL, control characters other than tab, LF and CR, DEL, and unpaired surrogates."""

JSON_MEDIA_TYPE: Final[str] = "application/json"
"""The media type of request and response bodies."""

_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _bad(code: str, detail: str, loc: list[Any], msg: str) -> ProblemError:
    return ProblemError(400, code, detail, errors=[{"loc": loc, "msg": msg}])


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _bad("VAL_MALFORMED_JSON", f"The key {key!r} appears twice in one object.", ["body"], "repeated key")
        result[key] = value
    return result


def parse_json(body: bytes) -> Any:
    """Parse a request body as one strict JSON document and check it with :func:`check_json`.

    Raises:
        ProblemError: 400 with the code of the broken rule (see the module's description).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("VAL_MALFORMED_JSON", "The body is not UTF-8.", ["body"], "not UTF-8") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_repeats, parse_constant=_refuse_constant)
    except RecursionError:
        raise _bad(
            "VAL_TOO_DEEP", f"The body nests deeper than {MAX_DEPTH} levels.", ["body"], "nested too deep"
        ) from None
    except ValueError as exc:
        raise _bad("VAL_MALFORMED_JSON", f"The body is not valid JSON: {exc}", ["body"], "not valid JSON") from None
    check_json(value)
    return value


def check_json(value: Any, loc: tuple[Any, ...] = ("body",)) -> None:
    """Check a decoded JSON value: depth, numbers and characters (see the module's description).

    Iterative, so a hostile depth cannot exhaust the stack.

    Raises:
        ProblemError: 400 naming the first offending field.
    """
    stack: list[tuple[Any, tuple[Any, ...], int]] = [(value, loc, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise _bad(
                    "VAL_TOO_DEEP", f"The body nests deeper than {MAX_DEPTH} levels.", list(where), "nested too deep"
                )
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_text(key, (*where, key), "key")
                    stack.append((child, (*where, key), depth + 1))
            else:
                stack.extend((child, (*where, index), depth + 1) for index, child in enumerate(item))
        elif isinstance(item, str):
            _check_text(item, where, "string")
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                raise _bad(
                    "VAL_NUMBER_OUT_OF_RANGE",
                    "An integer of the body does not fit in 64 bits.",
                    list(where),
                    "integer out of range",
                )
        elif isinstance(item, float) and not math.isfinite(item):
            raise _bad(
                "VAL_NUMBER_OUT_OF_RANGE", "A number of the body is not finite.", list(where), "number out of range"
            )


def _check_text(text: str, where: tuple[Any, ...], what: str) -> None:
    found = FORBIDDEN_CHARACTERS.search(text)
    if found is not None:
        raise _bad(
            "VAL_INVALID_CHARACTER",
            f"A {what} holds the character U+{ord(found.group()):04X}, which is not accepted "
            "(NUL, control characters other than tab and line breaks, unpaired surrogates).",
            list(where),
            f"{what} holds a forbidden character",
        )


def _media_type(scope: Scope) -> tuple[str, dict[str, str]] | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-type":
            main, *params = value.decode("latin-1").split(";")
            parameters = {}
            for param in params:
                key, _, raw = param.partition("=")
                parameters[key.strip().lower()] = raw.strip().strip('"').lower()
            return main.strip().lower(), parameters
    return None


def _is_json(media: tuple[str, dict[str, str]] | None) -> bool:
    if media is None:
        return False
    main, parameters = media
    if main != JSON_MEDIA_TYPE and not (main.startswith("application/") and main.endswith("+json")):
        return False
    return parameters.get("charset", "utf-8") in ("utf-8", "utf8")


def check_query(scope: Scope) -> None:
    """Refuse a query string or path holding forbidden characters, or a query that is not UTF-8.

    Raises:
        ProblemError: 400 ``VAL_INVALID_CHARACTER`` naming the parameter.
    """
    path = scope.get("path", "")
    if FORBIDDEN_CHARACTERS.search(path):
        raise _bad("VAL_INVALID_CHARACTER", "The path holds a control character.", ["path"], "forbidden character")
    raw = scope.get("query_string", b"")
    if not raw:
        return
    try:
        pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise _bad("VAL_INVALID_CHARACTER", "The query string is not UTF-8.", ["query"], "not UTF-8") from None
    for name, value in pairs:
        _check_text(name, ("query", name), "query parameter name")
        _check_text(value, ("query", name), "query parameter")


class RequestValidationMiddleware:
    """Applies the media-type, JSON and character rules to every request (see the module's description).

    Args:
        app: The next ASGI application.
        form_prefix: Paths under this prefix (the dashboard) may send url-encoded forms instead of JSON.
    """

    def __init__(self, app: ASGIApp, form_prefix: str | None = None) -> None:
        self.app = app
        self.form_prefix = form_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the request, then hand it on (its body stays readable downstream)."""
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        check_query(scope)
        if scope.get("method") in _BODY_METHODS:
            request: Request[Any, Any, Any] = Request(scope, receive)
            body = await request.body()
            # The dashboard's forms are url-encoded; its handlers check their own fields.
            if body and not (self.form_prefix and scope["path"].startswith(self.form_prefix)):
                if not _is_json(_media_type(scope)):
                    raise ProblemError(
                        415,
                        "VAL_UNSUPPORTED_MEDIA_TYPE",
                        "A request body must be JSON: send it with 'Content-Type: application/json'.",
                        headers={"Accept": JSON_MEDIA_TYPE},
                    )
                parse_json(body)
        await self.app(scope, receive, send)


def decode_request_body(model: type[BaseModel], value: Any) -> BaseModel:
    """Validate a decoded body as ``model`` in pydantic's strict JSON mode (no coercion between types).

    Raises:
        ProblemError: 400 ``VAL_INVALID_REQUEST`` with a field error per problem, under ``["body", ...]``.
    """
    try:
        return model.model_validate_json(msgspec.json.encode(value), strict=True)
    except ValidationError as exc:
        raise ProblemError(
            400, "VAL_INVALID_REQUEST", "The request body is not valid.", errors=pydantic_errors(exc)
        ) from None


def is_request_body(annotation: Any) -> bool:
    """Whether ``annotation`` is one of the gateway's request body models."""
    from stella.gateway.schemas import RequestBody  # the schemas import this module's bounds

    return isinstance(annotation, type) and issubclass(annotation, RequestBody)


class StrictBodyPlugin(InitPluginProtocol):
    """Makes :func:`decode_request_body` the decoder of every request body model.

    Litestar takes the first decoder whose predicate matches, and the pydantic plugin adds its own (lax)
    one when it initialises; this plugin therefore registers, after every plugin known so far, a second
    one that puts the strict decoder first.
    """

    def __init__(self, *, armed: bool = False) -> None:
        self._armed = armed

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Queue the strict decoder behind the plugins already configured (they may add decoders)."""
        if not self._armed:
            app_config.plugins.append(StrictBodyPlugin(armed=True))
            return app_config
        decoder: tuple[Callable[[Any], bool], Callable[[Any, Any], Any]] = (is_request_body, decode_request_body)
        app_config.type_decoders = [decoder, *(app_config.type_decoders or [])]
        return app_config


__all__ = [
    "FORBIDDEN_CHARACTERS",
    "INT32_MAX",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_DEPTH",
    "RequestValidationMiddleware",
    "StrictBodyPlugin",
    "check_json",
    "check_query",
    "decode_request_body",
    "parse_json",
]
