"""Prompt files, context formatting, rendering, API keys and prices (no model needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.config import GenerationSpec
from workbench.errors import ConfigError, ProviderError
from workbench.generation import (ContextChunk, cost_usd, format_context, load_prices, load_prompt, make_client, render,
                                  rendered_hash)

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
