"""Hosted providers without a network: the price table's dated entries and Azure lookups, and the
clients each provider gets."""

from __future__ import annotations

import datetime as dt

import openai
import pytest

from workbench.config.experiment import EmbeddingSpec, GenerationSpec
from workbench.errors import ConfigError
from workbench.providers.prices import cost_usd, load_prices, price_for
from workbench.settings import prices_path
from workbench.stages.generation import make_client


def test_price_table_is_dated_and_sourced():
    import yaml

    raw = yaml.safe_load(prices_path(environ={}).read_text(encoding="utf-8"))
    assert isinstance(raw["updated"], dt.date) and raw["source"]
    prices = load_prices()
    hosted = {k: v for k, v in prices.items() if not k.startswith("local:")}
    assert hosted and all(isinstance(v.updated, dt.date) for v in hosted.values())


def test_azure_prices_fall_back_to_the_openai_list_price():
    prices = load_prices()
    assert price_for("azure_openai:gpt-4o-mini", prices) is prices["azure_openai:gpt-4o-mini"]
    assert price_for("azure_openai:gpt-4.1-2025-04-14", prices) is prices["gpt-4.1"]
    assert cost_usd("azure_openai:gpt-4.1", 1_000_000, 0, prices) == pytest.approx(2.0)
    assert cost_usd("azure_openai:no-such-model", 10, 10, prices) is None


def test_bad_price_metadata(tmp_path):
    p = tmp_path / "prices.yaml"
    p.write_text("models:\n  m: {input_per_1m_usd: 1, output_per_1m_usd: 2, updated: [2026]}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"models.m.updated: expected a date"):
        load_prices(p)
    p.write_text("models:\n  m: {input_per_1m_usd: 1, output_per_1m_usd: 2, updatd: 2026-01-01}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"unknown key 'updatd' \(did you mean 'updated'\?\)"):
        load_prices(p)


def test_each_provider_gets_its_client(monkeypatch):
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "k-azure")
    monkeypatch.setenv("OPENAI_API_KEY", "k-openai")
    azure = make_client(GenerationSpec(provider="azure_openai", model="gpt-4o-mini", prompt="p.yaml",
                                       azure_endpoint="https://res.openai.azure.com", api_version="2024-10-21", deployment="chat"), None)
    assert isinstance(azure, openai.AzureOpenAI) and azure.api_key == "k-azure"
    assert str(azure.base_url) == "https://res.openai.azure.com/openai/deployments/chat/"
    hosted = make_client(GenerationSpec(provider="openai", model="gpt-4o-mini", prompt="p.yaml"), None)
    assert type(hosted) is openai.OpenAI and str(hosted.base_url).startswith("https://api.openai.com/")
    compat = make_client(GenerationSpec(provider="openai_compatible", model="m", prompt="p.yaml", base_url="http://127.0.0.1:9/v1"), None)
    assert str(compat.base_url) == "http://127.0.0.1:9/v1/" and compat.api_key == "none"


def test_azure_identity_covers_resource_and_deployment_not_api_version():
    from workbench.stages.embedding import embedder_fingerprint

    base = dict(provider="azure_openai", model="text-embedding-3-small", azure_endpoint="https://a.openai.azure.com",
                api_version="2024-10-21", deployment="emb")
    fp = embedder_fingerprint(EmbeddingSpec(**base))
    assert embedder_fingerprint(EmbeddingSpec(**{**base, "api_version": "2025-01-01"})) == fp
    assert embedder_fingerprint(EmbeddingSpec(**{**base, "deployment": "emb2"})) != fp
    assert embedder_fingerprint(EmbeddingSpec(**{**base, "azure_endpoint": "https://b.openai.azure.com"})) != fp
