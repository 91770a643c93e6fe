"""Start the whole Stella system on this machine: ``make run``.

With ``STELLA_DATABASE_URL`` / ``STELLA_NATS_URL`` unset, an embedded NATS (JetStream) and an embedded
Postgres are started from Python packages with their data under ``.stella/`` (kept across restarts) on
ports of their own. Every service then runs as its own process with its log lines prefixed by its name; a
service that crashes is restarted with a growing delay. On first start a tenant and an admin token are
created and the token is written to ``.stella/admin-token``, and the platform (operator) tenant with a
platform admin who creates tenants, whose token is written to ``.stella/platform-token``. ``.stella/env``
holds the connection settings of what runs, for the command-line tools (``set -a; . .stella/env``).
Ctrl-C stops everything.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import json
import os
import shlex
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiodocker
import asyncpg

from stella.kit.embedded import EmbeddedNats, EmbeddedPostgres, free_port

ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("STELLA_STATE_DIR", ROOT / ".stella"))
SERVICES = ("release", "promotion", "approval", "workflow", "deployment", "evidence", "events", "integration")
"""Headless services, started in this order before the gateway (those not installed are skipped)."""
COLORS = ("36", "33", "35", "32", "34", "31", "96", "93")
DOCKER_SOCKET = "unix:///var/run/docker.sock"
"""Where the local agent's Docker engine must answer for `make run` to start one."""
LOCAL_AGENT = "local"
"""Name of the agent `make run` starts on this machine, and of the environment its targets are offered in."""


@dataclass
class Child:
    """A supervised service process."""

    name: str
    argv: list[str]
    color: str
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    env: dict[str, str] | None = None
    """Its own environment, when it differs from the services' one."""


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _pick_port(env: str, preferred: int) -> int:
    if env in os.environ:
        return int(os.environ[env])
    return preferred if _port_free(preferred) else free_port()


def _say(text: str) -> None:
    print(f"\033[1m[stack]\033[0m {text}", flush=True)


def _ensure_master_key(path: Path) -> None:
    """Create the integration service's master key file (32 random bytes, base64, owner-only) unless it exists."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(base64.b64encode(os.urandom(32)).decode() + "\n")


def _installed(service: str) -> bool:
    """Whether the service's package is installed (found, not imported: each service imports itself)."""
    try:
        return importlib.util.find_spec(f"stella.{service}.app") is not None
    except ImportError:
        return False


async def _ensure_database(admin_dsn: str, name: str) -> str:
    conn = await asyncpg.connect(admin_dsn)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return admin_dsn.rsplit("/", 1)[0] + f"/{name}"


ENV_KEYS = (
    "STELLA_DATABASE_URL",
    "STELLA_NATS_URL",
    "STELLA_NATS_NAMESPACE",
    "STELLA_EVIDENCE_KEY_DIR",
    "STELLA_GATEWAY_HOST",
    "STELLA_GATEWAY_PORT",
)
"""Settings the command-line tools need to reach what `make run` started (written to .stella/env)."""


def _write_env(env: dict[str, str]) -> None:
    """Write the running system's connection settings, sourceable by a shell: `set -a; . .stella/env; set +a`."""
    lines = [f"{key}={shlex.quote(env[key])}" for key in ENV_KEYS if key in env]
    path = STATE / "env"
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


async def _pump(child: Child, stream: asyncio.StreamReader) -> None:
    prefix = f"\033[{child.color}m{child.name:>10} |\033[0m "
    while line := await stream.readline():
        sys.stdout.write(prefix + line.decode(errors="replace"))
        sys.stdout.flush()


async def _supervise(child: Child, env: dict[str, str], stopping: asyncio.Event) -> None:
    while not stopping.is_set():
        started = time.monotonic()
        child.process = await asyncio.create_subprocess_exec(
            *child.argv,
            env=child.env or env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=ROOT,
        )
        assert child.process.stdout is not None
        pump = asyncio.create_task(_pump(child, child.process.stdout))
        code = await child.process.wait()
        await pump
        if stopping.is_set():
            return
        child.restarts = 0 if time.monotonic() - started > 60 else child.restarts + 1
        delay = min(30.0, 0.5 * 2**child.restarts)
        _say(f"{child.name} exited with code {code}; restarting in {delay:.1f}s")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)


def _wait_ready(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (loopback URL we built)
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


async def _docker_answers(url: str = DOCKER_SOCKET) -> str | None:
    """The engine's version when a Docker engine answers at ``url``, else None."""
    docker = aiodocker.Docker(url=url)
    try:
        async with asyncio.timeout(5):
            version = await docker.version()
        return str(version.get("Version", "?"))
    except Exception:
        return None
    finally:
        await docker.close()


def _api(base: str, token: str, method: str, path: str, body: object | None = None) -> tuple[int, object]:
    """One call to the gateway as the first tenant's admin: (status, decoded body)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(  # noqa: S310 (loopback URL we built)
        base + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 (loopback URL we built)
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw) if raw else None
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def _items(answer: object) -> list[dict[str, object]]:
    if isinstance(answer, dict):
        return list(answer.get("items") or [])
    return list(answer) if isinstance(answer, list) else []


def _local_environment(base: str, token: str) -> str:
    """The id of the ``local`` environment, created after the others when missing."""
    _, listing = _api(base, token, "GET", "/api/v1/environments?page_size=500")
    environments = _items(listing)
    for environment in environments:
        if environment.get("name") == LOCAL_AGENT:
            return str(environment["id"])
    order = max((int(str(env.get("order_index", 0))) for env in environments), default=-1) + 1
    status, created = _api(base, token, "POST", "/api/v1/environments", {"name": LOCAL_AGENT, "order_index": order})
    if status != 201 or not isinstance(created, dict):
        raise RuntimeError(f"cannot create the {LOCAL_AGENT} environment: {status} {created}")
    return str(created["id"])


def _registration_token(base: str, token: str) -> str:
    status, created = _api(base, token, "POST", "/api/v1/agent-tokens", {"expires_in_s": 600})
    if status != 201 or not isinstance(created, dict):
        raise RuntimeError(f"cannot create an agent registration token: {status} {created}")
    return str(created["token"])


def _agent_id(base: str, token: str, name: str) -> str | None:
    _, listing = _api(base, token, "GET", "/api/v1/agents?page_size=500")
    for agent in _items(listing):
        if agent.get("name") == name and agent.get("status") != "revoked":
            return str(agent["id"])
    return None


def _offer_targets(base: str, token: str, agent_id: str) -> str:
    """Make sure the ``local`` environment has this machine's docker_host and compose_host targets."""
    environment = _local_environment(base, token)
    _, listing = _api(base, token, "GET", f"/api/v1/environments/{environment}/targets?page_size=500")
    existing = {str(target.get("name")) for target in _items(listing)}
    wanted = [
        {"name": "local-docker", "target_type": "docker_host", "connection": {"docker_url": DOCKER_SOCKET}},
        {
            "name": "local-compose",
            "target_type": "compose_host",
            "connection": {"docker_url": DOCKER_SOCKET, "project": "stella-local"},
        },
    ]
    for target in wanted:
        if target["name"] in existing:
            continue
        status, created = _api(
            base, token, "POST", f"/api/v1/environments/{environment}/targets", {**target, "agent_id": agent_id}
        )
        if status != 201:
            raise RuntimeError(f"cannot create the target {target['name']}: {status} {created}")
    return environment


async def _local_agent(base: str, token: str, env: dict[str, str]) -> Child | None:
    """The agent `make run` starts on this machine when a Docker engine answers on its default socket.

    On first start it gets a one-time registration token as the first tenant's admin; later starts use the
    credential the agent stored under ``.stella/agent``. Its targets are offered in a ``local`` environment.
    """
    version = await _docker_answers()
    if version is None:
        _say(f"no Docker engine answers on {DOCKER_SOCKET}: no local agent started")
        return None
    state = STATE / "agent"
    agent_env = {
        **env,
        "STELLA_AGENT_GATEWAY_URL": base,
        "STELLA_AGENT_NAME": LOCAL_AGENT,
        "STELLA_AGENT_STATE_DIR": str(state),
        "STELLA_AGENT_DOCKER_URL": DOCKER_SOCKET,
    }
    if not (state / "credential.json").exists():
        agent_env["STELLA_AGENT_REGISTRATION_TOKEN"] = await asyncio.to_thread(_registration_token, base, token)
    _say(f"Docker {version} answers on {DOCKER_SOCKET}: starting the local agent (state in {state})")
    return Child("agent", [sys.executable, "-m", "stella.agent"], "92", env=agent_env)


async def _offer_local_targets(base: str, token: str) -> None:
    """Once the local agent registered, offer its targets in the ``local`` environment."""
    for _ in range(120):
        agent_id = await asyncio.to_thread(_agent_id, base, token, LOCAL_AGENT)
        if agent_id is not None:
            environment = await asyncio.to_thread(_offer_targets, base, token, agent_id)
            _say(
                f"  Agent:  {LOCAL_AGENT} serves local-docker and local-compose in environment {LOCAL_AGENT} ({environment})"
            )
            return
        await asyncio.sleep(0.5)
    _say("the local agent did not register; see its log lines above")


async def main() -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    embedded: list[EmbeddedNats | EmbeddedPostgres] = []
    env = dict(os.environ)
    try:
        if "STELLA_NATS_URL" not in env:
            nats = EmbeddedNats(data_dir=STATE / "nats", port=_pick_port("STELLA_EMBEDDED_NATS_PORT", 14222))
            await asyncio.to_thread(nats.start)
            embedded.append(nats)
            env["STELLA_NATS_URL"] = nats.url
            _say(f"embedded NATS with JetStream on {nats.url} (data in {STATE / 'nats'})")
        if "STELLA_DATABASE_URL" not in env:
            pg = EmbeddedPostgres(data_dir=STATE / "postgres", port=_pick_port("STELLA_EMBEDDED_PG_PORT", 15432))
            await asyncio.to_thread(pg.start)
            embedded.append(pg)
            env["STELLA_DATABASE_URL"] = await _ensure_database(pg.url, "stella")
            _say(f"embedded Postgres on 127.0.0.1:{pg.port} (data in {STATE / 'postgres'})")
        # Every service connects as its own least-privilege role; the user above only runs the migrations.
        env.setdefault("STELLA_DATABASE_SERVICE_ROLES", "true")
        env.setdefault("STELLA_EVIDENCE_KEY_DIR", str(STATE / "keys"))
        env.setdefault("STELLA_EVENTS_KEY_DIR", str(STATE / "keys"))
        # The secret store's master key, generated once beside the evidence signing key.
        if "STELLA_INTEGRATION_MASTER_KEY" not in env:
            master = Path(
                env.setdefault("STELLA_INTEGRATION_MASTER_KEY_FILE", str(STATE / "keys" / "integration-master.key"))
            )
            _ensure_master_key(master)
        env.setdefault("STELLA_INTEGRATION_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128")
        # On one's own machine a registry on loopback is the usual one (a deployed service refuses it by default).
        env.setdefault("STELLA_RELEASE_REGISTRY_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128")
        port = int(env.setdefault("STELLA_GATEWAY_PORT", "8080"))
        host = env.setdefault("STELLA_GATEWAY_HOST", "127.0.0.1")
        python = sys.executable
        children = [
            Child(name, [python, "-m", f"stella.{name}"], COLORS[i % len(COLORS)])
            for i, name in enumerate(s for s in SERVICES if _installed(s))
        ]
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        tasks = [asyncio.create_task(_supervise(c, env, stopping)) for c in children]

        # The gateway starts with the services: it waits for its dependencies itself, and the two bootstraps
        # below only write its own schema (its migrations take a lock, so whichever comes first applies them).
        gateway = Child("gateway", [python, "-m", "stella.gateway", "serve"], "97")
        children.append(gateway)
        tasks.append(asyncio.create_task(_supervise(gateway, env, stopping)))

        token_file = STATE / "admin-token"
        platform_file = STATE / "platform-token"
        bootstrap, platform = await asyncio.gather(
            asyncio.create_subprocess_exec(
                python,
                "-m",
                "stella.gateway",
                "bootstrap",
                "--tenant",
                "default",
                "--admin",
                "admin",
                "--token-file",
                str(token_file),
                env=env,
                cwd=ROOT,
            ),
            asyncio.create_subprocess_exec(
                python,
                "-m",
                "stella.gateway",
                "bootstrap-platform",
                "--admin",
                "operator",
                "--token-file",
                str(platform_file),
                env=env,
                cwd=ROOT,
                stdout=asyncio.subprocess.DEVNULL,
            ),
        )
        if await bootstrap.wait() != 0:
            _say("bootstrapping the first tenant failed; see the message above")
            stopping.set()
        if await platform.wait() != 0:
            _say("bootstrapping the platform tenant failed; see the message above")
            stopping.set()
        _write_env(env)

        base = f"http://{host}:{port}"
        if not stopping.is_set() and await asyncio.to_thread(_wait_ready, f"{base}/readyz", 60):
            token = token_file.read_text().strip() if token_file.exists() else "(see .stella/admin-token)"
            _say("Stella is up.")
            _say(f"  API:    {base}/api/v1")
            _say(f"  Docs:   {base}/api/docs   (OpenAPI: {base}/api/v1/openapi.json)")
            _say(f"  Token:  {token}   (also in {token_file})")
            _say(f"  Tenants: the platform admin's token (POST {base}/api/v1/tenants) is in {platform_file}")
            _say(f"  Env:    {STATE / 'env'} holds the connection settings for the command-line tools")
            _say(f'  Try:    curl -H "Authorization: Bearer $(cat {token_file})" {base}/api/v1/components')
            try:
                agent = await _local_agent(base, token, env) if token_file.exists() else None
                if agent is not None:
                    children.append(agent)
                    tasks.append(asyncio.create_task(_supervise(agent, env, stopping)))
                    await _offer_local_targets(base, token)
            except (RuntimeError, OSError) as exc:
                _say(f"the local agent could not be set up: {exc}")
            _say("Press Ctrl-C to stop.")
        elif not stopping.is_set():
            _say(f"the gateway did not become ready at {base}/readyz; still trying, see the logs above")

        await stopping.wait()
        _say("stopping")
        for child in children:
            if child.process and child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
        await asyncio.wait(tasks, timeout=15)
        for child in children:
            if child.process and child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
        return 0
    finally:
        for server in reversed(embedded):
            await asyncio.to_thread(server.stop)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
