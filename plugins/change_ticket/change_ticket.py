"""Gate plugin ``change-ticket``: allow a promotion only when its change ticket is approved.

Answers ``gate.evaluate`` (JSON-RPC 2.0, one line on stdin, one on stdout). Reads ``<url>/<ticket>``, which
must answer JSON ``{"status": "..."}``; the promotion is allowed when the status is one of
``approved_statuses``. Anything else (no ticket, the API unreachable or answering an error, an unexpected
body) denies, with a reason code saying why.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_PATTERN = r"[A-Z][A-Z0-9]*-[0-9]+"
MAX_BODY = 64 * 1024


def deny(message: str, code: str, **details: Any) -> dict[str, Any]:
    return {"allow": False, "message": message, "reason_codes": [code], "details": details}


def find_ticket(config: dict[str, Any], promotion: dict[str, Any]) -> str | None:
    if config.get("ticket"):
        return str(config["ticket"])
    match = re.search(config.get("ticket_pattern", DEFAULT_PATTERN), str(promotion.get("reason") or ""))
    return match.group(0) if match else None


def evaluate(params: dict[str, Any]) -> dict[str, Any]:
    config = params.get("config") or {}
    ticket = find_ticket(config, params.get("promotion") or {})
    if ticket is None:
        return deny(
            "no change ticket: name one in the gate's config or in the promotion's reason", "CHANGE_TICKET_MISSING"
        )
    url = config["url"].rstrip("/") + "/" + urllib.parse.quote(ticket, safe="")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 (the schema allows http(s) only)
    try:
        with urllib.request.urlopen(request, timeout=float(config.get("timeout_s", 5))) as response:  # noqa: S310
            body = response.read(MAX_BODY + 1)
    except urllib.error.HTTPError as exc:
        code = "CHANGE_TICKET_NOT_FOUND" if exc.code == 404 else "CHANGE_TICKET_API_ERROR"
        return deny(f"ticket {ticket}: the ticket API answered {exc.code}", code, ticket=ticket)
    except (urllib.error.URLError, OSError) as exc:
        return deny(
            f"ticket {ticket}: the ticket API is unreachable ({exc})", "CHANGE_TICKET_API_UNREACHABLE", ticket=ticket
        )
    try:
        status = json.loads(body[:MAX_BODY])["status"]
    except (ValueError, KeyError, TypeError):
        return deny(f"ticket {ticket}: the ticket API's answer has no status", "CHANGE_TICKET_API_ERROR", ticket=ticket)
    approved = config.get("approved_statuses", ["approved"])
    if status in approved:
        return {
            "allow": True,
            "message": f"change ticket {ticket} is {status}",
            "details": {"ticket": ticket, "status": status},
        }
    return deny(
        f"change ticket {ticket} is {status}, not {' or '.join(approved)}",
        "CHANGE_TICKET_NOT_APPROVED",
        ticket=ticket,
        status=status,
    )


def main() -> None:
    request = json.loads(sys.stdin.readline())
    if request.get("method") != "gate.evaluate":
        error = {"code": -32601, "message": f"unknown method {request.get('method')!r}"}
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": request.get("id"), "error": error}) + "\n")
        return
    result = evaluate(request.get("params") or {})
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": request.get("id"), "result": result}) + "\n")


if __name__ == "__main__":
    main()
