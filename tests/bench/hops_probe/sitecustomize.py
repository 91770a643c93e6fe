"""Counts (and times) a process's Postgres statements, and counts its NATS messages, for ``tests/bench/hops.py``.

Loaded by every process that bench starts (its directory is put first on ``PYTHONPATH``); inert unless
``STELLA_HOPS_DIR`` is set. ``SIGUSR1`` writes the counts so far to ``$STELLA_HOPS_DIR/<pid>.json``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections import Counter, defaultdict
from typing import Any

_DIR = os.environ.get("STELLA_HOPS_DIR")


def _install() -> None:
    import asyncpg.connection
    import nats.aio.client

    sql: Counter[str] = Counter()
    sqlt: dict[str, float] = defaultdict(float)
    out: Counter[str] = Counter()
    received: Counter[str] = Counter()
    namespace = os.environ.get("STELLA_NATS_NAMESPACE", "")
    hexes = re.compile(r"[0-9a-f]{16,}")

    def statement(query: str) -> str:
        return " ".join(query.split())[:90]

    def subject(name: str) -> str:
        name = name.replace(f".{namespace}", "").replace(f"{namespace}.", "") if namespace else name
        if name.startswith("$JS.ACK"):
            return "$JS.ACK (ack)"
        if name.startswith("$JS.API.CONSUMER.MSG.NEXT"):
            return "$JS.API.CONSUMER.MSG.NEXT (fetch)"
        if name.startswith("_INBOX"):
            return "_INBOX (reply)"
        return hexes.sub("*", name)

    conn_cls: Any = asyncpg.connection.Connection
    execute, run = conn_cls.execute, conn_cls._execute
    executemany = conn_cls.executemany

    async def timed(query: str, call: Any) -> Any:
        key = statement(query)
        sql[key] += 1
        started = time.perf_counter()
        try:
            return await call
        finally:
            sqlt[key] += time.perf_counter() - started

    async def counted_execute(self: Any, query: str, *args: Any, **kw: Any) -> Any:
        if args:  # with arguments it goes through _execute, counted there
            return await execute(self, query, *args, **kw)
        return await timed(query, execute(self, query, *args, **kw))

    async def counted_run(self: Any, query: str, *args: Any, **kw: Any) -> Any:
        return await timed(query, run(self, query, *args, **kw))

    async def counted_many(self: Any, query: str, *args: Any, **kw: Any) -> Any:
        return await timed(query, executemany(self, query, *args, **kw))

    conn_cls.execute, conn_cls._execute, conn_cls.executemany = counted_execute, counted_run, counted_many

    client: Any = nats.aio.client.Client
    publish, process = client.publish, client._process_msg

    async def counted_publish(self: Any, *args: Any, **kw: Any) -> Any:
        out[subject(args[0] if args else kw.get("subject", ""))] += 1
        return await publish(self, *args, **kw)

    async def counted_process(self: Any, sid: int, name: bytes, *args: Any, **kw: Any) -> Any:
        received[subject(name.decode())] += 1
        return await process(self, sid, name, *args, **kw)

    client.publish, client._process_msg = counted_publish, counted_process

    def dump(*_: Any) -> None:
        assert _DIR is not None
        argv = " ".join(sys.argv)
        path = os.path.join(_DIR, f"{os.getpid()}.json")
        with open(path + ".tmp", "w") as f:
            json.dump({"argv": argv, "sql": sql, "sqlt": sqlt, "published": out, "received": received}, f)
        os.replace(path + ".tmp", path)

    signal.signal(signal.SIGUSR1, dump)


if _DIR:
    _install()
