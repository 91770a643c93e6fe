"""The isolated runner: every way a plugin can misbehave fails only its own call, by the limit it broke."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from stella.plugins import (
    InstalledPlugin,
    Limits,
    PluginAnswerTooLarge,
    PluginCrashed,
    PluginError,
    PluginIsolationUnavailable,
    PluginProtocolError,
    PluginRemoteError,
    PluginResourceLimit,
    PluginRunner,
    PluginTimeout,
    network_isolation_available,
)

MakePlugin = Callable[..., InstalledPlugin]

ECHO = 'answer({"echo": request["params"], "method": request["method"]})'
CRASH = 'sys.stderr.write("boom: something broke\\n"); sys.exit(3)'
INFINITE_LOOP = "while True:\n    pass"
HANG = "import time\nopen('pid', 'w').write(str(os.getpid()))\ntime.sleep(3600)"
HUGE_ANSWER = "chunk = 'x' * (1024 * 1024)\nfor _ in range(100):\n    sys.stdout.write(chunk)\nsys.stdout.write('\\n')"
INVALID_JSON = 'sys.stdout.write("this is {not json\\n")'
MEMORY_HOG = "hog = bytearray(2 * 1024 * 1024 * 1024)\nanswer({})"


@pytest.fixture
def runner() -> PluginRunner:
    return PluginRunner(Limits(wall_s=20.0, cpu_s=2, memory_bytes=256 * 1024 * 1024, max_answer_bytes=1024 * 1024))


async def test_a_well_behaved_plugin_answers(runner: PluginRunner, make_plugin: MakePlugin) -> None:
    plugin = make_plugin("echo", ECHO)
    assert await runner.call(plugin, "step.execute", {"n": 1}) == {"echo": {"n": 1}, "method": "step.execute"}


async def test_a_crash_fails_the_call_with_its_exit_and_last_error_line(
    runner: PluginRunner, make_plugin: MakePlugin
) -> None:
    with pytest.raises(PluginCrashed, match=r"exit code 3.*boom: something broke"):
        await runner.call(make_plugin("crash", CRASH), "step.execute", {})


async def test_an_infinite_loop_is_stopped_by_the_cpu_limit(runner: PluginRunner, make_plugin: MakePlugin) -> None:
    with pytest.raises(PluginResourceLimit, match="2 s CPU-time limit"):
        await runner.call(make_plugin("spin", INFINITE_LOOP), "step.execute", {})


async def test_a_hang_is_killed_at_the_wall_clock_limit(make_plugin: MakePlugin) -> None:
    plugin = make_plugin("hang", HANG)
    runner = PluginRunner(Limits(wall_s=1.0))
    with pytest.raises(PluginTimeout, match="1 s wall-clock limit"):
        await runner.call(plugin, "step.execute", {})
    pid = int((plugin.directory / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# Answers, then leaves behind a process of another session (out of the plugin's process group, so not killed
# with it) that holds the plugin's stdout and stderr open.
DAEMON = """
import subprocess, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(20)"], start_new_session=True)
answer({"left": "a daemon"})
"""


async def test_a_process_the_plugin_leaves_behind_holding_its_pipes_does_not_hold_the_call(
    make_plugin: MakePlugin,
) -> None:
    """The call returns once the plugin answered and its process group is gone, within the wall-clock limit,
    even while a process it started in another session still holds the plugin's output pipes open (on
    Python 3.11 waiting for the process also waited for its pipes to close: here until that process ended)."""
    runner = PluginRunner(Limits(wall_s=10.0))
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(15):
        assert await runner.call(make_plugin("daemon", DAEMON), "step.execute", {}) == {"left": "a daemon"}
    assert loop.time() - started < 10.0


async def test_a_100_mb_answer_is_not_read_beyond_the_answer_limit(
    runner: PluginRunner, make_plugin: MakePlugin
) -> None:
    with pytest.raises(PluginAnswerTooLarge, match="1048576 bytes"):
        await runner.call(make_plugin("huge", HUGE_ANSWER), "step.execute", {})


async def test_invalid_json_is_a_protocol_error(runner: PluginRunner, make_plugin: MakePlugin) -> None:
    with pytest.raises(PluginProtocolError, match="not valid JSON"):
        await runner.call(make_plugin("garbage", INVALID_JSON), "step.execute", {})


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("[1, 2]", "not a JSON-RPC 2.0 response"),
        ('{"jsonrpc": "2.0", "id": 7, "result": 1}', "for id 7"),
        ('{"jsonrpc": "2.0", "id": 1}', "exactly one of result and error"),
        ('{"jsonrpc": "2.0", "id": 1, "error": "bad"}', "not a JSON-RPC error object"),
    ],
)
async def test_answers_that_break_json_rpc_are_protocol_errors(
    runner: PluginRunner, make_plugin: MakePlugin, line: str, words: str
) -> None:
    plugin = make_plugin("odd", f"sys.stdout.write({line!r} + '\\n')")
    with pytest.raises(PluginProtocolError, match=words):
        await runner.call(plugin, "step.execute", {})


async def test_a_memory_hog_is_stopped_by_the_memory_limit(runner: PluginRunner, make_plugin: MakePlugin) -> None:
    with pytest.raises(PluginResourceLimit, match="memory limit"):
        await runner.call(make_plugin("hog", MEMORY_HOG), "step.execute", {})


async def test_a_json_rpc_error_is_reported_with_its_code(runner: PluginRunner, make_plugin: MakePlugin) -> None:
    body = 'sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "no url"}}) + "\\n")'
    with pytest.raises(PluginRemoteError, match="no url") as caught:
        await runner.call(make_plugin("refuses", body), "step.execute", {})
    assert caught.value.rpc_code == -32602


async def test_the_plugin_inherits_no_environment(
    runner: PluginRunner, make_plugin: MakePlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STELLA_TEST_SECRET", "hunter2")
    plugin = make_plugin("env", "answer(sorted(os.environ))")
    seen = await runner.call(plugin, "step.execute", {})
    assert "STELLA_TEST_SECRET" not in seen
    assert "PATH" not in seen
    # Python itself may set LC_CTYPE when it starts in the C locale (PEP 538); nothing else is there.
    assert set(seen) <= {"LC_CTYPE"}


async def test_children_of_a_killed_plugin_are_killed_with_it(make_plugin: MakePlugin) -> None:
    body = (
        "import subprocess, time\n"
        "child = subprocess.Popen(['/bin/sleep', '3600'])\n"
        "open('child', 'w').write(str(child.pid))\n"
        "time.sleep(3600)\n"
    )
    plugin = make_plugin("parent", body)
    with pytest.raises(PluginTimeout):
        await PluginRunner(Limits(wall_s=2.0)).call(plugin, "step.execute", {})
    child = int((plugin.directory / "child").read_text())
    assert await _gone(child)


async def _gone(pid: int) -> bool:
    """Whether ``pid`` ended (gone, or a zombie its new parent has not reaped yet); waits up to 10 s for it."""
    status = Path(f"/proc/{pid}/status")
    for _ in range(200):
        try:
            state = next(line for line in status.read_text().splitlines() if line.startswith("State:"))
        except FileNotFoundError:
            return True
        if "Z" in state.split()[1]:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_misbehaving_calls_leave_the_caller_and_other_calls_alone(
    runner: PluginRunner, make_plugin: MakePlugin
) -> None:
    plugins = [
        make_plugin("crash", CRASH),
        make_plugin("spin", INFINITE_LOOP),
        make_plugin("huge", HUGE_ANSWER),
        make_plugin("garbage", INVALID_JSON),
        make_plugin("hog", MEMORY_HOG),
    ]
    echo = make_plugin("echo", ECHO)
    results = await asyncio.gather(
        *(runner.call(p, "step.execute", {}) for p in plugins),
        runner.call(echo, "step.execute", {"ok": True}),
        return_exceptions=True,
    )
    assert [type(r) for r in results[:-1]] == [
        PluginCrashed,
        PluginResourceLimit,
        PluginAnswerTooLarge,
        PluginProtocolError,
        PluginResourceLimit,
    ]
    assert all(isinstance(r, PluginError) for r in results[:-1])
    assert results[-1] == {"echo": {"ok": True}, "method": "step.execute"}
    # The caller goes on calling.
    assert await runner.call(echo, "step.execute", {"again": 1}) == {"echo": {"again": 1}, "method": "step.execute"}


CONNECT = """
import socket
with socket.socket() as s:
    s.settimeout(2)
    answer({"connect": s.connect_ex(("127.0.0.1", int(request["params"]["port"])))})
"""


@pytest.mark.skipif(not network_isolation_available(), reason="this host cannot create network namespaces")
async def test_a_plugin_without_the_network_permission_cannot_connect_anywhere(
    runner: PluginRunner, make_plugin: MakePlugin
) -> None:
    accepted: list[int] = []

    async def on_connect(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        allowed = make_plugin("with-network", CONNECT, permissions=("network",))
        assert await runner.call(allowed, "step.execute", {"port": port}) == {"connect": 0}
        cut_off = make_plugin("without-network", CONNECT)
        answer = await runner.call(cut_off, "step.execute", {"port": port})
        assert answer["connect"] != 0
    assert accepted == [1]
    assert runner.network_isolated


async def test_a_host_without_namespaces_fails_a_call_that_requires_one(
    make_plugin: MakePlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stella.plugins import runner as module

    monkeypatch.setattr(module, "network_isolation_available", lambda: False)
    strict = PluginRunner(require_network_isolation=True)
    with pytest.raises(PluginIsolationUnavailable):
        await strict.call(make_plugin("cut-off", ECHO), "step.execute", {})
    # A plugin granted the network needs no namespace, and a lenient runner runs without one.
    assert await strict.call(make_plugin("net", ECHO, permissions=("network",)), "step.execute", {})
    assert await PluginRunner().call(make_plugin("lenient", ECHO), "step.execute", {})
