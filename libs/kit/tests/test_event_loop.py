"""A process runs on the event loop ``STELLA_EVENT_LOOP`` names, and what the services use of it works on both."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys

import pytest
import uvloop
from pydantic import ValidationError

from stella.kit import service
from stella.kit.settings import ServiceSettings
from stella.kit.startup import ConfigurationError, environment_event_loop, freeze_startup_heap, run_process


def test_the_event_loop_setting_defaults_to_uvloop_and_refuses_others(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STELLA_EVENT_LOOP", raising=False)
    assert ServiceSettings().event_loop == "uvloop"
    assert environment_event_loop() == "uvloop"
    monkeypatch.setenv("STELLA_EVENT_LOOP", "asyncio")
    assert ServiceSettings().event_loop == "asyncio"
    assert environment_event_loop() == "asyncio"
    monkeypatch.setenv("STELLA_EVENT_LOOP", "trio")
    with pytest.raises(ValidationError, match="event_loop"):
        ServiceSettings()
    with pytest.raises(ConfigurationError, match="STELLA_EVENT_LOOP"):
        environment_event_loop()


@pytest.mark.parametrize("name", ["uvloop", "asyncio"])
def test_a_service_process_runs_on_the_configured_loop(name: str) -> None:
    seen: dict[str, object] = {}

    async def serve(settings: ServiceSettings) -> None:
        loop = asyncio.get_running_loop()
        seen["loop"] = loop
        # What the services use of their loop: signal handlers, threads and child processes.
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGUSR1, stop.set)
        try:
            signal.raise_signal(signal.SIGUSR1)
            await asyncio.wait_for(stop.wait(), 10)
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)
        seen["thread"] = await asyncio.to_thread(lambda: "ran")
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "print('child')", stdout=asyncio.subprocess.PIPE
        )
        out, _ = await child.communicate()
        seen["child"] = (child.returncode, out.strip())

    assert run_process("kit-test", ServiceSettings(event_loop=name), serve, wait=False) == 0
    assert isinstance(seen["loop"], uvloop.Loop) is (name == "uvloop")
    assert seen["thread"] == "ran"
    assert seen["child"] == (0, b"child")


def test_freezing_the_start_up_heap_moves_what_is_alive_out_of_the_collector() -> None:
    gc.unfreeze()
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() > 1000  # modules, classes, ... of this test process
    finally:
        gc.unfreeze()


async def test_a_service_freezes_what_start_up_built_before_it_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(service, "freeze_startup_heap", lambda: calls.append("freeze"))

    class Started:
        name = "fake"

        async def start(self) -> None:
            calls.append("start")
            # Delivered once run() handles SIGTERM: it installs its handlers right after start returns.
            asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)

        async def stop(self) -> None:
            calls.append("stop")

    await service.ServiceRuntime.run(Started())  # type: ignore[arg-type]
    assert calls == ["start", "freeze", "stop"]
