"""The ``Allow`` header: the methods a path really has, on ``OPTIONS`` and on 405 answers.

Litestar builds an ``OPTIONS`` handler for each group of route handlers it registers, so a path served by
several handlers (``GET`` and ``POST /components``) answered ``Allow`` with only some of its methods. The
hook below replaces the header with the union of every handler's methods for the path, plus ``OPTIONS``.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from litestar import Litestar
from litestar.datastructures import MutableScopeHeaders
from litestar.routes import HTTPRoute
from litestar.types import Message, Scope


@cache
def _methods_by_path(app: Litestar) -> dict[str, frozenset[str]]:
    methods: dict[str, set[str]] = {}
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            methods.setdefault(route.path, set()).update(route.methods)
    return {path: frozenset(found | {"OPTIONS"}) for path, found in methods.items()}


def allowed_methods(app: Litestar, path_template: str) -> list[str]:
    """Every method served at ``path_template`` (as registered, e.g. ``/api/v1/components/{component_id:str}``)."""
    return sorted(_methods_by_path(app).get(path_template, frozenset({"OPTIONS"})))


async def set_allow_header(message: Message, scope: Scope) -> None:
    """``before_send`` hook: on ``OPTIONS`` answers and 405s, ``Allow`` lists every method of the path."""
    if message["type"] != "http.response.start":
        return
    if scope.get("method") != "OPTIONS" and message["status"] != 405:
        return
    handler: Any = scope.get("route_handler")
    app: Any = scope.get("app")
    paths = getattr(handler, "paths", None)
    if not isinstance(app, Litestar) or not paths:
        return
    methods = sorted({method for path in paths for method in allowed_methods(app, path)})
    MutableScopeHeaders.from_message(message)["Allow"] = ", ".join(methods)
