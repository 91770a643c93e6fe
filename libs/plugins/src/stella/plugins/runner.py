"""Running a plugin call in isolation: one subprocess per call, JSON-RPC 2.0 over stdio.

The protocol: the runner writes one request line to the plugin's stdin and closes it::

    {"jsonrpc": "2.0", "id": 1, "method": "gate.evaluate", "params": {...}}\\n

and reads one response line from its stdout::

    {"jsonrpc": "2.0", "id": 1, "result": {...}}\\n      or      {"jsonrpc": "2.0", "id": 1, "error": {"code", "message", "data"?}}\\n

Isolation, so a plugin cannot harm the service that calls it:

* the process starts with an **empty environment** (no variable of the service, so none of its secrets), in the
  plugin's directory, in a **session of its own** (its whole process group is killed when the call ends);
* ``RLIMIT_CPU`` bounds its CPU time, ``RLIMIT_AS`` its memory, ``RLIMIT_FSIZE`` the files it writes, and no
  core file is dumped;
* a plugin whose manifest does not ask for the ``network`` permission runs in a **network namespace of its
  own** with no interface up, so it cannot connect anywhere (not even to the host's loopback services). Where
  the kernel refuses namespaces (checked once), the runner says so in :attr:`PluginRunner.network_isolated` and
  the plugin runs without (``require_network_isolation`` makes such a call fail instead);
* a **wall-clock** timeout covers the whole call: a plugin that hangs is killed;
* at most ``max_answer_bytes`` of its answer are read: a larger one is not read further, the process is killed;
* an answer that is not JSON, not a JSON-RPC 2.0 response, or answers another id is a protocol error.

Each of these fails only the call, with a :class:`~stella.plugins.errors.PluginError` saying which limit or
rule was broken; the caller's process, event loop and other calls go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from stella.plugins.errors import (
    PluginAnswerTooLarge,
    PluginCrashed,
    PluginError,
    PluginIsolationUnavailable,
    PluginProtocolError,
    PluginRemoteError,
    PluginResourceLimit,
    PluginTimeout,
)
from stella.plugins.manifest import InstalledPlugin, Permission

_CHUNK: Final = 64 * 1024
_STDERR_KEPT: Final = 4 * 1024
_REQUEST_ID: Final = 1


@dataclass(frozen=True)
class Limits:
    """The limits of one plugin call.

    Attributes:
        wall_s: Longest the call may take, start to answer; the process group is killed then.
        cpu_s: CPU seconds the process may use (``RLIMIT_CPU``; the kernel stops it beyond).
        memory_bytes: Address space the process may map (``RLIMIT_AS``).
        max_answer_bytes: Longest answer line read.
        max_file_bytes: Largest file the process may write (``RLIMIT_FSIZE``).
    """

    wall_s: float = 30.0
    cpu_s: int = 10
    memory_bytes: int = 512 * 1024 * 1024
    max_answer_bytes: int = 1024 * 1024
    max_file_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.wall_s <= 0 or self.cpu_s < 1 or self.memory_bytes < 16 * 1024 * 1024 or self.max_answer_bytes < 1:
            raise ValueError(f"plugin limits out of range: {self}")


_CLONE_NEWNET: Final = 0x40000000
_CLONE_NEWUSER: Final = 0x10000000


def _unshare_network() -> Callable[[], None]:
    """A function (for a child, before its program) moving it into a network namespace of its own.

    Tries a plain network namespace (needs ``CAP_SYS_ADMIN``), then one inside a new user namespace
    (unprivileged); raises ``OSError`` when the kernel allows neither.
    """
    libc = ctypes.CDLL(None, use_errno=True)  # loaded in the parent: the child only calls it

    def unshare() -> None:  # pragma: no cover - runs in the child process
        if libc.unshare(_CLONE_NEWNET) != 0 and libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "cannot create a network namespace for the plugin")

    return unshare


@functools.cache
def network_isolation_available() -> bool:
    """Whether this host lets the runner put a plugin into a network namespace of its own (checked once)."""
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", "pass"], preexec_fn=_unshare_network(), timeout=10, check=False, env={}
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _limit_process(limits: Limits, *, isolate_network: bool = False) -> Callable[[], None]:
    """The function run in the child before the plugin's program: set its resource limits (and, when asked,
    move it into a network namespace of its own)."""
    unshare = _unshare_network() if isolate_network else None

    def apply() -> None:  # pragma: no cover - runs in the child process
        if unshare is not None:
            unshare()
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def command_of(plugin: InstalledPlugin) -> list[str]:
    """The program and arguments a call runs: a ``.py`` entrypoint under this Python in isolated mode."""
    if plugin.program.suffix == ".py":
        return [sys.executable, "-I", "-B", str(plugin.program)]
    return [str(plugin.program)]


class PluginRunner:
    """Calls plugins, each call in a fresh isolated process, at most ``max_concurrent`` at once.

    Args:
        limits: The limits of every call unless a call names its own.
        max_concurrent: Calls running at once; more wait their turn (their wall clock starts when they run).
        require_network_isolation: Fail a call of a plugin without the ``network`` permission when this host
            cannot cut it off the network (otherwise it runs without the namespace).
    """

    def __init__(
        self, limits: Limits | None = None, *, max_concurrent: int = 8, require_network_isolation: bool = False
    ) -> None:
        self.limits = limits or Limits()
        self._slots = asyncio.Semaphore(max_concurrent)
        self.require_network_isolation = require_network_isolation

    @property
    def network_isolated(self) -> bool:
        """Whether plugins without the ``network`` permission run cut off the network on this host."""
        return network_isolation_available()

    async def call(
        self, plugin: InstalledPlugin, method: str, params: Mapping[str, Any], *, limits: Limits | None = None
    ) -> Any:
        """Call ``method`` of ``plugin`` with ``params`` and return the response's ``result``.

        Raises:
            PluginTimeout: no answer within ``wall_s``.
            PluginResourceLimit: stopped by its CPU-time or memory limit.
            PluginCrashed: the process ended without an answer.
            PluginAnswerTooLarge: the answer exceeded ``max_answer_bytes``.
            PluginProtocolError: the answer is not a JSON-RPC 2.0 response to this request.
            PluginRemoteError: the plugin answered with a JSON-RPC error.
        """
        limits = limits or self.limits
        request = json.dumps({"jsonrpc": "2.0", "id": _REQUEST_ID, "method": method, "params": dict(params)})
        async with self._slots:
            line = await self._exchange(plugin, method, request.encode() + b"\n", limits)
        return _result(plugin.id, method, line)

    async def _exchange(self, plugin: InstalledPlugin, method: str, request: bytes, limits: Limits) -> bytes:
        """Start the process, send the request, read the answer line; the process is gone when this returns."""
        isolate = Permission.NETWORK not in plugin.manifest.permissions
        if isolate and not network_isolation_available():
            if self.require_network_isolation:
                raise PluginIsolationUnavailable(
                    plugin.id, method, "this host cannot cut the plugin off the network, which its permissions require"
                )
            isolate = False
        try:
            process = await asyncio.create_subprocess_exec(
                *command_of(plugin),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={},
                cwd=plugin.directory,
                start_new_session=True,
                preexec_fn=_limit_process(limits, isolate_network=isolate),
                close_fds=True,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise PluginCrashed(plugin.id, method, f"the plugin's process could not start: {exc}") from None
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        stderr = asyncio.create_task(_keep_head(process.stderr))
        try:
            async with asyncio.timeout(limits.wall_s):
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    process.stdin.write(request)
                    await process.stdin.drain()
                    process.stdin.close()
                line = await _read_line(process.stdout, limits.max_answer_bytes)
                if line is None:
                    await process.wait()
        except TimeoutError:
            raise PluginTimeout(
                plugin.id, method, f"no answer within the {limits.wall_s:g} s wall-clock limit; killed"
            ) from None
        except _TooLarge:
            raise PluginAnswerTooLarge(
                plugin.id, method, f"the answer exceeds {limits.max_answer_bytes} bytes; not read further, killed"
            ) from None
        finally:
            _kill_group(process)
            await _reaped(process)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(stderr, timeout=1.0)
            stderr.cancel()
            # Our ends of its pipes, which a process it left behind may still hold open (closed already when
            # the pipes ended): the process object exposes no close of its own.
            transport: asyncio.SubprocessTransport | None = getattr(process, "_transport", None)
            if transport is not None and process.returncode is not None:
                transport.close()
        if line is not None:
            return line
        raise _exit_error(plugin.id, method, process.returncode, stderr.result() if stderr.done() else b"", limits)


class _TooLarge(Exception):
    pass


_REAPED_WITHIN_S = 5.0
"""How long a killed plugin may take to be reaped (it takes milliseconds; the bound only keeps a call finite)."""


async def _reaped(process: asyncio.subprocess.Process) -> None:
    """Wait until the killed plugin's exit is known (its ``returncode``).

    Not ``process.wait()``: on Python 3.11 that also waits until every pipe of the process is closed, and a
    process the plugin started in a session of its own (out of the group that was killed) may hold them
    open as long as it lives, which held the call past its wall-clock limit.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _REAPED_WITHIN_S
    while process.returncode is None and loop.time() < deadline:
        await asyncio.sleep(0.005)


async def _read_line(stream: asyncio.StreamReader, limit: int) -> bytes | None:
    """The first line of ``stream`` (without its newline), reading at most ``limit`` bytes of it.

    Returns None at end of stream with nothing read; a last line without newline is returned as is.
    """
    buffer = bytearray()
    while True:
        chunk = await stream.read(_CHUNK)
        if not chunk:
            return bytes(buffer) if buffer.strip() else None
        end = chunk.find(b"\n")
        buffer += chunk if end < 0 else chunk[:end]
        if len(buffer) > limit:
            raise _TooLarge
        if end >= 0:
            return bytes(buffer)


async def _keep_head(stream: asyncio.StreamReader) -> bytes:
    """Read ``stream`` to its end (so the process never blocks on it) and keep its first bytes."""
    head = bytearray()
    while chunk := await stream.read(_CHUNK):
        if len(head) < _STDERR_KEPT:
            head += chunk[: _STDERR_KEPT - len(head)]
    return bytes(head)


def _kill_group(process: asyncio.subprocess.Process) -> None:
    """Kill the plugin's process group: the plugin and whatever it started."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    # Children that outlived an exited plugin are in the same group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _exit_error(plugin_id: str, method: str, code: int | None, stderr: bytes, limits: Limits) -> PluginError:
    tail = stderr.decode(errors="replace").strip().splitlines()
    last = tail[-1][:300] if tail else ""
    if code == -signal.SIGXCPU or (code == -signal.SIGKILL and not last):
        return PluginResourceLimit(plugin_id, method, f"stopped by its {limits.cpu_s} s CPU-time limit")
    if "MemoryError" in last or "Cannot allocate memory" in stderr.decode(errors="replace"):
        return PluginResourceLimit(plugin_id, method, f"stopped by its {limits.memory_bytes} byte memory limit")
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    return PluginCrashed(plugin_id, method, f"ended without answering ({how})" + (f": {last}" if last else ""))


def _result(plugin_id: str, method: str, line: bytes) -> Any:
    """The ``result`` of a response line, or the error it stands for."""
    try:
        response = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PluginProtocolError(plugin_id, method, f"the answer is not valid JSON ({exc})") from None
    if not isinstance(response, dict) or response.get("jsonrpc") != "2.0":
        raise PluginProtocolError(plugin_id, method, "the answer is not a JSON-RPC 2.0 response object")
    if response.get("id") != _REQUEST_ID:
        raise PluginProtocolError(plugin_id, method, f"the answer is for id {response.get('id')!r}, not {_REQUEST_ID}")
    if ("result" in response) == ("error" in response):
        raise PluginProtocolError(plugin_id, method, "the answer must hold exactly one of result and error")
    if "result" in response:
        return response["result"]
    error = response["error"]
    if (
        not isinstance(error, dict)
        or not isinstance(error.get("code"), int)
        or not isinstance(error.get("message"), str)
    ):
        raise PluginProtocolError(plugin_id, method, "the answer's error is not a JSON-RPC error object")
    raise PluginRemoteError(plugin_id, method, error["message"][:1000], rpc_code=error["code"], data=error.get("data"))
