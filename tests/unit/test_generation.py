"""Prompt files, context formatting, rendering, API keys and prices (no model needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.config.experiment import GenerationSpec
from workbench.config.files import load_prompt
from workbench.errors import ConfigError, ProviderError
from workbench.providers.prices import cost_usd, load_prices
from workbench.stages.generation import ContextChunk, format_context, make_client, render, rendered_hash

ROOT = Path(__file__).resolve().parents[2]
CHUNKS = [ContextChunk(1, "d1", "Paris", "Paris is in France."), ContextChunk(2, "d2", "", "Berlin is in Germany.")]


@pytest.mark.parametrize("name", ["grounded_qa.yaml", "grounded_qa_strict.yaml"])
def test_shipped_prompts_load_and_ask_for_citations(name):
    prompt = load_prompt(ROOT / "experiments" / "prompts" / name)
    assert prompt.mode == "chat" and len(prompt.content_hash) == 64
    messages = render(prompt, "Where is Paris?", CHUNKS)
    assert messages[0]["role"] == "system" and "[1]" in messages[0]["content"] + messages[-1]["content"]
    assert "Where is Paris?" in messages[-1]["content"] and "[2] Berlin is in Germany." in messages[-1]["content"]


def test_format_context_numbers_chunks():
    assert format_context(CHUNKS) == "[1] (Paris) Paris is in France.\n\n[2] Berlin is in Germany."


def test_completion_prompt_and_render_hash(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("mode: completion\ntemplate: |\n  Context: {context}\n  Question: {question}\n  Answer:\nstop: [\"\\n\"]\n")
    prompt = load_prompt(p)
    text = render(prompt, "Q?", CHUNKS)
    assert text.startswith("Context: [1] (Paris)") and prompt.stop == ("\n",)
    assert rendered_hash(text) == rendered_hash(render(prompt, "Q?", CHUNKS)) != rendered_hash(render(prompt, "Q2?", CHUNKS))


BAD = {
    "malformed": ("mode: chat\nuser: [unclosed\n", "malformed YAML"),
    "not_mapping": ("- a\n- b\n", "expected a mapping"),
    "unknown_key": ("mode: chat\nusr: '{context} {question}'\n", "unknown key 'usr' (did you mean 'user'?)"),
    "bad_mode": ("mode: chatty\nuser: '{context} {question}'\n", "mode: expected 'chat' or 'completion'"),
    "no_question": ("mode: chat\nuser: 'Context: {context}'\n", "never uses {question}"),
    "no_context": ("mode: chat\nuser: 'Q: {question}'\n", "never uses {context}"),
    "unknown_placeholder": ("mode: chat\nuser: '{context} {questoin} {question}'\n", "unknown placeholder {questoin} (did you mean 'question'?)"),
    "template_in_chat": ("mode: chat\nuser: '{context} {question}'\ntemplate: x\n", "template: not used in mode 'chat'"),
    "missing_user": ("mode: chat\nsystem: '{context} {question}'\n", "user: required"),
    "bad_stop": ("mode: chat\nuser: '{context} {question}'\nstop: 3\n", "stop: expected a list"),
    "brace": ("mode: chat\nuser: '{context} {question} {'\n", "malformed template"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_prompt_files(tmp_path, case):
    text, expected = BAD[case]
    p = tmp_path / f"{case}.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_prompt(p)
    message = str(exc.value)
    assert expected in message and str(p) in message and "\n" not in message


def test_missing_prompt_file(tmp_path):
    with pytest.raises(ConfigError, match="prompt file not found"):
        load_prompt(tmp_path / "nope.yaml")


def test_missing_api_key_names_the_variable_not_a_value(monkeypatch):
    monkeypatch.delenv("MY_LLM_KEY", raising=False)
    spec = GenerationSpec(provider="openai_compatible", model="m", prompt="p.yaml", base_url="http://127.0.0.1:9/v1", api_key_env="MY_LLM_KEY")
    with pytest.raises(ProviderError, match="MY_LLM_KEY is not set"):
        make_client(spec, None)
    monkeypatch.setenv("MY_LLM_KEY", "sk-secret-value-123")
    client = make_client(spec, None)
    assert str(client.base_url).startswith("http://127.0.0.1:9/v1")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ProviderError, match="OPENAI_API_KEY"):
        make_client(GenerationSpec(provider="openai", model="gpt-4o-mini", prompt="p.yaml"), None)


def test_prices():
    prices = load_prices()
    assert cost_usd("local:smollm2-135m", 1000, 100, prices) == 0.0
    # gpt-4o-mini: 1000 * 0.15/1e6 + 100 * 0.60/1e6
    assert cost_usd("gpt-4o-mini", 1000, 100, prices) == pytest.approx(1000 * 0.15e-6 + 100 * 0.60e-6)
    assert cost_usd("some-unpriced-model", 10, 10, prices) is None


def test_bad_price_table(tmp_path):
    p = tmp_path / "prices.yaml"
    p.write_text("models:\n  m: {input_per_1m_usd: 1}\n")
    with pytest.raises(ConfigError, match="models.m: needs"):
        load_prices(p)


# ---------------------------------------------------------------------------------------------
# More prompt validation, prices, and generate() against a scripted OpenAI-compatible server


@pytest.mark.parametrize("text, expected", [
    ("mode: chat\nsystem: [a, b]\nuser: '{context} {question}'\n", "system: expected text, got list"),
    ("mode: completion\nsystem: hi\ntemplate: '{context} {question}'\n", "system: not used in mode 'completion'"),
    ("mode: completion\ntemplate: '{context} {question} {context.title}'\n", "unknown placeholder {context.title}"),
    ("mode: chat\nuser: '{context} {question} {}'\n", "unknown placeholder {}"),
    ("mode: chat\nuser: '{context} {question}'\nstop: [1]\n", "stop: expected a list of strings"),
])
def test_more_bad_prompt_files(tmp_path, text, expected):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_prompt(p)
    assert expected in str(exc.value) and str(p) in str(exc.value)


def test_literal_braces_and_content_hash(tmp_path):
    import hashlib

    p = tmp_path / "p.yaml"
    p.write_text("mode: chat\nsystem: 'Reply as JSON like {{\"answer\": \"...\"}}.'\nuser: \"{context}\\n\\nQ: {question}\"\n")
    prompt = load_prompt(p)
    messages = render(prompt, "What is {x}?", CHUNKS)
    assert messages[0]["content"] == 'Reply as JSON like {"answer": "..."}.'
    assert messages[1]["content"].endswith("Q: What is {x}?")  # the question is data, never a template
    assert prompt.content_hash == hashlib.sha256(p.read_bytes()).hexdigest()


def test_local_client_needs_a_server_url():
    spec = GenerationSpec(provider="local", model="smollm2-135m", prompt="p.yaml")
    with pytest.raises(ProviderError, match="running LocalLLMServer"):
        make_client(spec, None)
    assert str(make_client(spec, "http://127.0.0.1:1/v1").base_url).startswith("http://127.0.0.1:1/v1")


def test_prices_edge_cases(tmp_path, caplog):
    prices = load_prices()
    assert cost_usd("smollm2-135m", 10, 10, prices) == 0.0
    # a dated snapshot is priced as its undated model; 1M prompt tokens of gpt-4o = 2.50 USD
    assert cost_usd("gpt-4o-2024-08-06", 1_000_000, 0, prices) == pytest.approx(2.50)
    assert cost_usd("gpt-4o-mini", None, 5, prices) is None
    with caplog.at_level("WARNING", logger="workbench.providers.prices"):
        assert cost_usd("my-hosted-llm", 10, 10, prices) is None
    assert "my-hosted-llm" in caplog.text and "prices.yaml" in caplog.text
    for text, expected in [("- a\n", "expected a mapping"),
                           ("models:\n  m: {input_per_1m_usd: 1, output_per_1m_usd: -1}\n", "models.m.output_per_1m_usd: expected a non-negative"),
                           ("models:\n  m: {input_per_1m_usd: 1, output_per_1m_usd: 1, ouput: 2}\n", "unknown key 'ouput'"),
                           ("models: [\n", "cannot read")]:
        p = tmp_path / "prices.yaml"
        p.write_text(text)
        with pytest.raises(ConfigError, match=expected):
            load_prices(p)


def _chunk(content=None, finish=None, usage=None):
    choices = [] if usage else [{"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish}]
    return {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": choices, "usage": usage}


class _ScriptedServer:
    """An OpenAI-compatible endpoint on loopback that replays a script and records request bodies."""

    def __init__(self, respond):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                status, events = respond(self.path, body)
                if status != 200:
                    data = json.dumps(events).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for event in events:
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _spec(base_url, **kw):
    return GenerationSpec(provider="openai_compatible", model="m", prompt="p.yaml", base_url=base_url, api_key_env="WB_UNIT_KEY", **kw)


def _client(spec):
    import openai

    # no retries: a failure must come back at once in a unit test
    return openai.OpenAI(base_url=spec.base_url, api_key="sk-unit-secret-123456", max_retries=0, timeout=5)


def test_generate_uses_streamed_usage_and_sends_sampling_settings(tmp_path):
    from workbench.stages.generation import generate

    prompt_file = tmp_path / "p.yaml"
    prompt_file.write_text("mode: chat\nuser: '{context} {question}'\nstop: [\"\\n\\n\"]\n")
    script = [_chunk("Paris"), _chunk(" [1]"), _chunk(finish="stop"), _chunk(usage={"prompt_tokens": 41, "completion_tokens": 3, "total_tokens": 44})]
    server = _ScriptedServer(lambda path, body: (200, script))
    with server as url:
        spec = _spec(url, seed=7, max_tokens=9)
        result = generate(_client(spec), spec, load_prompt(prompt_file), "Where?", CHUNKS)
    assert result.error is None and result.answer == "Paris [1]"
    [request] = server.requests
    body = request["body"]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-unit-secret-123456"
    assert (body["model"], body["temperature"], body["seed"], body["max_tokens"], body["stop"]) == ("m", 0.0, 7, 9, ["\n\n"])
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": format_context(CHUNKS) + " Where?"}]
    assert (result.prompt_tokens, result.completion_tokens, result.tokens_estimated) == (41, 3, False)
    assert 0 < result.ttft_s <= result.latency_s


def test_generate_without_stream_options_support_counts_deltas(tmp_path):
    from workbench.stages.generation import generate

    def respond(path, body):
        if "stream_options" in body:
            return 400, {"error": {"message": "Unrecognized request argument supplied: stream_options"}}
        if path.endswith("/extras/tokenize"):
            return 404, {"detail": "Not Found"}
        return 200, [_chunk("I don't"), _chunk(" know."), _chunk(finish="stop")]

    with _ScriptedServer(respond) as server_url:
        spec = _spec(server_url)
        prompt = load_prompt(ROOT / "experiments" / "prompts" / "grounded_qa_strict.yaml")
        result = generate(_client(spec), spec, prompt, "Who?", CHUNKS)
    assert result.error is None and result.answer == "I don't know."
    # no usage and no tokenizer endpoint: completion tokens are the delta count, prompt tokens unknown
    assert (result.prompt_tokens, result.completion_tokens, result.tokens_estimated) == (None, 2, True)


def test_generate_returns_errors_without_the_key(tmp_path):
    from workbench.stages.generation import generate

    prompt = load_prompt(ROOT / "experiments" / "prompts" / "grounded_qa.yaml")

    def respond(path, body):
        return 401, {"error": {"message": "Incorrect API key provided: sk-unit-secret-123456", "code": "invalid_api_key"}}

    with _ScriptedServer(respond) as url:
        spec = _spec(url)
        result = generate(_client(spec), spec, prompt, "Q?", CHUNKS)
    assert result.error.startswith("AuthenticationError: ") and "sk-unit-secret" not in result.error
    assert result.answer == "" and result.latency_s is None and result.prompt_tokens is None

    dead = _spec("http://127.0.0.1:9/v1")  # nothing listens on port 9
    result = generate(_client(dead), dead, prompt, "Q?", CHUNKS)
    assert result.error == "APIConnectionError: Connection error." and result.answer == ""


def test_rate_limiter_spaces_request_starts_across_threads():
    import time
    from concurrent.futures import ThreadPoolExecutor

    from workbench.providers.throttle import AdaptiveLimiter

    limiter = AdaptiveLimiter(4, requests_per_minute=600)  # one start every 0.1 s
    starts = []

    def call(_):
        limiter.run(lambda: starts.append(time.monotonic()), lambda exc: (False, None))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(call, range(5)))
    starts.sort()
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= 0.09
    t0 = time.monotonic()
    AdaptiveLimiter(1).run(lambda: None, lambda exc: (False, None))  # no rate cap: at once
    assert time.monotonic() - t0 < 0.05


def test_local_llm_rejects_concurrency():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="one request at a time"):
        GenerationSpec(provider="local", model="smollm2-135m", prompt="p.yaml", concurrency=2)
