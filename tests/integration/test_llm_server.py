"""The bundled SmolLM2 behind ``llama_cpp.server`` on loopback, driven by ``generate`` (no mocks).

What llama_cpp.server 0.3.36 does and these tests pin: it sends no ``usage`` while streaming even
when asked (``stream_options.include_usage``), so ``generate`` counts completion tokens as content
deltas and prompt tokens with ``POST /extras/tokenize``; for SmolLM2 in chat mode both equal the
``usage`` of the same request made without streaming.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from workbench.config.experiment import GenerationSpec
from workbench.config.files import load_prompt
from workbench.errors import ProviderError
from workbench.providers.llm_server import LocalLLMServer, local_model_path
from workbench.stages.generation import ContextChunk, generate, make_client, render

pytestmark = pytest.mark.integration

PROMPT = Path(__file__).resolve().parents[2] / "experiments" / "prompts" / "grounded_qa.yaml"
SPEC = GenerationSpec(provider="local", model="smollm2-135m", prompt=str(PROMPT), max_tokens=48)
QUESTIONS = {
    "What is the capital of France?": [
        ContextChunk(1, "d1", "Paris", "Paris is the capital and largest city of France, with 2.1 million residents."),
        ContextChunk(2, "d2", "Berlin", "Berlin is the capital of Germany and lies on the river Spree."),
    ],
    "In which year was the Eiffel Tower completed?": [
        ContextChunk(1, "d3", "Louvre", "The Louvre is the world's most-visited museum."),
        ContextChunk(2, "d4", "Eiffel Tower", "The Eiffel Tower was completed in 1889 for the World's Fair."),
    ],
}


def _refuses_connections(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_rag_answers_timings_tokens_and_determinism(tmp_path):
    prompt = load_prompt(PROMPT)
    assert LocalLLMServer("smollm2-135m").n_threads == len(os.sched_getaffinity(0))  # the default; starts nothing
    # One thread: on a shared 2-core machine, llama.cpp's spinning threads slow down 10x or more
    # whenever anything else is busy, and this test must stay short.
    with LocalLLMServer("smollm2-135m", n_threads=1, log_dir=tmp_path) as server:
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        assert server.model_path == local_model_path("smollm2-135m") and server.model_path.suffix == ".gguf"
        models = httpx.get(f"{server.base_url}/models", trust_env=False).json()
        assert [m["id"] for m in models["data"]] == ["smollm2-135m"]
        client = make_client(SPEC, server.base_url)
        for question, chunks in QUESTIONS.items():
            first = generate(client, SPEC, prompt, question, chunks)
            second = generate(client, SPEC, prompt, question, chunks)
            assert first.error is None and first.answer.strip(), first
            assert 0 < first.ttft_s <= first.latency_s
            assert first.tokens_estimated and first.prompt_tokens > 0 and 0 < first.completion_tokens <= SPEC.max_tokens
            assert second.answer == first.answer, "temperature 0, seed 0: the same answer twice"
            # the streamed estimate equals the server's own count for the same request without streaming
            plain = client.chat.completions.create(model=SPEC.model, messages=render(prompt, question, chunks),
                                                   temperature=0, seed=0, max_tokens=SPEC.max_tokens)
            assert plain.choices[0].message.content.strip() == first.answer
            assert (plain.usage.prompt_tokens, plain.usage.completion_tokens) == (first.prompt_tokens, first.completion_tokens)
        proc, port = server._proc, server.port
    assert proc.poll() is not None, "the server process is gone once the context exits"
    assert _refuses_connections(port) and not server.running
    assert server.log_path.parent == tmp_path and server.log_path.stat().st_size > 0


def test_kill_gives_an_error_row_and_restart_recovers_on_the_same_port(tmp_path):
    prompt = load_prompt(PROMPT)
    question, chunks = next(iter(QUESTIONS.items()))
    with LocalLLMServer("smollm2-135m", n_threads=1, log_dir=tmp_path) as server:
        url, pid = server.base_url, server.pid
        quick = openai.OpenAI(base_url=url, api_key="local", max_retries=0, timeout=10)
        server.kill()
        failed = generate(quick, SPEC, prompt, question, chunks)
        assert failed.error == "APIConnectionError: Connection error." and failed.answer == ""
        server.restart()
        assert server.base_url == url and server.pid != pid and server.running
        again = generate(quick, SPEC, prompt, question, chunks)
        assert again.error is None and again.answer


def test_startup_failure_raises_with_the_log_tail(tmp_path):
    with socket.socket() as taken:  # a port someone else already listens on
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = LocalLLMServer("smollm2-135m", port=taken.getsockname()[1], log_dir=tmp_path, startup_timeout_s=30)
        with pytest.raises(ProviderError) as exc:
            server.start()
    message = str(exc.value)
    assert "smollm2-135m" in message and "address already in use" in message and "\n" not in message
    assert not server.running


def test_the_server_exits_when_the_process_that_started_it_is_killed(tmp_path):
    """The server runs in its own session, so a SIGKILL of `workbench run` (or of a kernel) cannot
    stop() it: its watchdog sees the parent gone and ends it, leaving no orphan on the machine."""
    parent = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from workbench.providers.llm_server import LocalLLMServer\n"
        f"s = LocalLLMServer('smollm2-135m', n_threads=1, log_dir={str(tmp_path)!r}).start()\n"
        "print(s.pid, s.port, flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    try:
        pid, port = map(int, parent.stdout.readline().split())
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", trust_env=False).status_code == 200
        assert b"llama_cpp.server" in Path(f"/proc/{pid}/cmdline").read_bytes()
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _running(pid):
            time.sleep(0.1)
        assert not _running(pid), "the server outlived its parent"
        assert _refuses_connections(port)
    finally:
        parent.kill()
        parent.wait()


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie waiting for its parent to reap it)."""
    try:
        return b") Z " not in Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
