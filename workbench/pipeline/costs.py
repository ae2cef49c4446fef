"""What the retrieval stages cost, per question and once per index, from the price table.

Generation is priced from the tokens the LLM reports (``GenerationStep.cost``). The other calls a
question makes are priced here from the tokens they send, counted with the model's own tokenizer
(tiktoken's cl100k_base for hosted OpenAI-style models, as they bill):

- the query's embedding (dense and hybrid runs): its tokens at the embedding model's input price;
- a hosted reranker: the tokens of the query paired with each candidate passage (how per-token
  rerank APIs count) at the model's input price, plus ``per_call_usd`` (APIs priced per search); an
  LLM reranker: the query and the passages once (its prompt template not counted: a lower bound);
- the index build (``index_cost_usd``, once per run's index, not per question): every chunk's tokens.

Local models cost 0; a hosted model missing from the price table has an unknown cost (None), never 0.
Costs are nominal: what the call costs when made, whether or not this run found it in a cache.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..config import EmbeddingSpec, RerankSpec
from ..providers.prices import call_cost_usd, load_prices
from ..stages.chunking import ChunkSet
from ..stages.embedding import default_tokenizer
from .components import Components
from .plan import PlannedRun


def embedding_price_name(spec: EmbeddingSpec) -> str:
    return {"local": f"local:{spec.model}", "azure_openai": f"azure_openai:{spec.model}"}.get(spec.provider, spec.model)


class StageCosts:
    """The per-question costs of one run's query embedding and reranking."""

    def __init__(self, run: PlannedRun, components: Components):
        self.embedding: EmbeddingSpec | None = run.config.embedding
        self.rerank: RerankSpec | None = run.config.rerank
        self.components = components
        self.prices = load_prices()

    def embedding_cost(self, query: str) -> dict:
        """``{"embedding_cost_usd": ...}`` for a run that embeds its questions, else ``{}``."""
        if self.embedding is None:
            return {}
        if self.embedding.provider == "local":
            return {"embedding_cost_usd": 0.0}
        tokens = self.components.tokenizer(self.embedding).count_fn(query)
        return {"embedding_cost_usd": call_cost_usd(embedding_price_name(self.embedding), tokens, self.prices)}

    def rerank_cost(self, query: str, passages: Callable[[], Sequence[str]]) -> dict:
        """``{"rerank_cost_usd": ...}`` for a reranked run, else ``{}``; ``passages()`` gives the
        candidates as the reranker sees them (read only for a priced, hosted reranker)."""
        spec = self.rerank
        if spec is None:
            return {}
        if spec.method in ("embedding", "cross_encoder") or (spec.method == "llm" and spec.provider == "local"):
            return {"rerank_cost_usd": 0.0}
        count, passages = default_tokenizer().count_fn, passages()
        if spec.method == "hosted":
            tokens = sum(count(query) + count(p) for p in passages)
            name = spec.model
        else:
            tokens = count(query) + sum(count(p) for p in passages)
            name = f"azure_openai:{spec.model}" if spec.provider == "azure_openai" else spec.model
        return {"rerank_cost_usd": call_cost_usd(name, tokens, self.prices)}


def index_cost(run: PlannedRun, chunks: ChunkSet) -> list[dict]:
    """``index_cost_usd``: embedding every chunk (with its context) once, for a run with an index."""
    spec = run.config.embedding
    if spec is None:
        return []
    cost = 0.0 if spec.provider == "local" else call_cost_usd(embedding_price_name(spec), chunks.total_tokens(), load_prices())
    if cost is None:
        return []
    return [{"metric": "index_cost_usd", "value": cost, "ci_low": cost, "ci_high": cost, "n": len(chunks)}]
