"""Step plugin ``smoke-test``: run a configured command and report its exit code and output.

Answers ``step.execute`` (JSON-RPC 2.0, one line on stdin, one on stdout). The command is a list of
arguments run directly, never through a shell, so nothing in it is interpreted. The step succeeds when the
exit code is ``expect_exit_code`` (default 0); its outputs are ``{exit_code, stdout, stderr}`` (each stream's
last 16 KiB).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

KEPT = 16 * 1024


def tail(data: bytes) -> str:
    return data[-KEPT:].decode(errors="replace")


def execute(params: dict[str, Any]) -> dict[str, Any]:
    config = params.get("config") or {}
    command = [str(part) for part in config["command"]]
    expected = int(config.get("expect_exit_code", 0))
    try:
        done = subprocess.run(command, capture_output=True, timeout=float(config.get("timeout_s", 60)), check=False)
    except FileNotFoundError:
        return {"succeeded": False, "error": f"no program {command[0]!r}", "outputs": {"exit_code": None}}
    except subprocess.TimeoutExpired as exc:
        return {
            "succeeded": False,
            "error": f"the command ran longer than {exc.timeout:g} s and was killed",
            "outputs": {"exit_code": None},
        }
    outputs = {"exit_code": done.returncode, "stdout": tail(done.stdout), "stderr": tail(done.stderr)}
    logs = f"$ {' '.join(command)}\n{outputs['stdout']}{outputs['stderr']}exit code {done.returncode}\n"
    if done.returncode != expected:
        return {
            "succeeded": False,
            "error": f"exit code {done.returncode}, expected {expected}",
            "outputs": outputs,
            "logs": logs,
        }
    return {"succeeded": True, "outputs": outputs, "logs": logs}


def main() -> None:
    request = json.loads(sys.stdin.readline())
    if request.get("method") != "step.execute":
        error = {"code": -32601, "message": f"unknown method {request.get('method')!r}"}
        sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": request.get("id"), "error": error}) + "\n")
        return
    result = execute(request.get("params") or {})
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": request.get("id"), "result": result}) + "\n")


if __name__ == "__main__":
    main()
