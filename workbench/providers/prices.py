"""What a call to a hosted model costs: the price table (USD per million tokens) and its lookups.

Prices change more often than code, so they live in a YAML file (``workbench/providers/prices.yaml``,
or ``$WORKBENCH_PRICES``; see :func:`workbench.settings.prices_path`) validated like every other
file the workbench reads (:class:`workbench.config.files.PriceTable`). A model missing from the
table has an unknown cost, never a cost of zero: only the bundled local models are free.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from ..config.experiment import LOCAL_LLMS
from ..config.files import PriceEntry, load_price_table
from ..settings import prices_path

_log = logging.getLogger(__name__)
_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")  # gpt-4o-mini-2024-07-18 is priced as gpt-4o-mini
_UNPRICED_WARNED: set[str] = set()


def price_name(provider: str, model: str) -> str:
    """The price table's name for a model: local models are free; an Azure entry wins over the model's."""
    return {"local": f"local:{model}", "azure_openai": f"azure_openai:{model}"}.get(provider, model)


def load_prices(path: str | os.PathLike | None = None) -> dict[str, PriceEntry]:
    """The price table's entries by model name, from ``path`` or :func:`~workbench.settings.prices_path`."""
    return load_price_table(Path(path) if path else prices_path()).models


def price_for(model: str, prices: dict[str, PriceEntry]) -> PriceEntry | None:
    """The table's entry for ``model`` (or for its undated name); None when it has none.

    ``azure_openai:MODEL`` is looked up first (Azure prices differ by region and deployment
    type), then the OpenAI list price of MODEL.
    """
    found = prices.get(model) or prices.get(_SNAPSHOT.sub("", model))
    if found is None and model.startswith("azure_openai:"):
        return price_for(model.removeprefix("azure_openai:"), prices)
    return found


def cost_usd(model: str, prompt_tokens: int | None, completion_tokens: int | None, prices: dict[str, PriceEntry]) -> float | None:
    """Cost of one call in USD: 0 for a local model, None when unknown (never shown as free).

    ``model`` is the hosted model name, or ``local:<name>`` (a bare local name also counts) for the
    bundled models. An unpriced hosted model gives None and one logged warning naming the price file.
    """
    if model.startswith("local:") or model in LOCAL_LLMS:
        return 0.0
    entry = _priced(model, prices)
    if entry is None or prompt_tokens is None or completion_tokens is None:
        return None
    return (prompt_tokens * entry.input_per_1m_usd + completion_tokens * entry.output_per_1m_usd) / 1e6 + entry.per_call_usd


def call_cost_usd(model: str, input_tokens: int | None, prices: dict[str, PriceEntry]) -> float | None:
    """Cost of one embedding or rerank call in USD: input tokens at the input price, plus the
    entry's ``per_call_usd`` (rerank APIs priced per search); 0 for a local model, None when unknown."""
    return cost_usd(model, input_tokens, 0, prices)


def _priced(model: str, prices: dict[str, PriceEntry]) -> PriceEntry | None:
    entry = price_for(model, prices)
    if entry is None and model not in _UNPRICED_WARNED:
        _UNPRICED_WARNED.add(model)
        _log.warning("no price for model %r in the price table (workbench/providers/prices.yaml or $WORKBENCH_PRICES): "
                     "its cost is reported as unknown", model)
    return entry
