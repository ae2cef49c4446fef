"""One question through one configuration: retrieve, (rerank), answer, score -> one stored row.

This is the only place that turns a question into a result. The runner calls it for every planned
question (retrieval for a batch, then the answers, concurrently for remote endpoints, then the
scores); the explorer's "try a query" calls :meth:`QuestionPath.ask` for a question typed live.
All stage objects come from :class:`~workbench.pipeline.components.Components`, so a test can run
this path with fakes.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config.files import JUDGE_PLACEHOLDERS, Attack, AttackSuite, Prompt, load_attack_suite, load_prompt
from ..data.types import Query
from ..errors import ProviderError
from ..evaluation.judge import verdict_metrics
from ..evaluation.kpis import kpi_metrics
from ..evaluation.perquestion import cutoffs_for, question_metrics
from ..evaluation.spans import chunk_level_metrics, relevant_chunks
from ..hashing import hash_obj
from ..providers.clients import identity_fields
from ..providers.prices import cost_usd, load_prices, price_name
from ..stages.generation import ContextChunk, GenerationResult, parse_verdict, render, rendered_hash
from ..stages.retrieval import RetrievalResult
from ..stages.safety import attack_succeeded, pii_metrics, plant, prompt_instruction_text, redact
from .budget import Budget
from .components import Components, Generator
from .costs import StageCosts
from .plan import Plan, PlannedRun


@dataclass
class Retrieved:
    """A question after retrieval (and reranking): what the answer and the scores are made from."""

    position: int
    query: Query
    result: RetrievalResult | None = None
    rerank_latency_s: float | None = None
    hits: list[dict] = field(default_factory=list)  # stored form: rank, chunk_id, doc_id, score, text
    context: list[ContextChunk] | None = None
    rendered: object = None
    attack: Attack | None = None
    failed: str | None = None  # the retrieval's error (an embedding endpoint down): a failed row
    stage_costs: dict = field(default_factory=dict)  # the query embedding's and the reranker's cost


@dataclass
class Answered:
    result: GenerationResult
    attack_trial: dict | None = None


class GenerationStep:
    """One run's LLM side: its prompt, the cached and budgeted call, the fallback model, the cost."""

    def __init__(self, run: PlannedRun, prompt: Prompt, components: Components, budget: Budget):
        self.run, self.spec, self.prompt = run, run.config.generation, prompt
        self.components, self.budget = components, budget
        self.prices = load_prices()

    @property
    def generator(self) -> Generator:  # started on first use: a resumed run with nothing to do starts no server
        return self.components.generator(self.spec)

    def cache_key(self, rendered) -> str:
        lineage = self.run.lineage
        return "gen:" + hash_obj({
            "model": lineage["llm"], "model_file": lineage["llm_file_hash"], "base_url": self.spec.base_url,
            "prompt_hash": lineage["prompt_hash"], "rendered": rendered_hash(rendered),
            "sampling": {"temperature": self.spec.temperature, "seed": self.spec.seed, "max_tokens": self.spec.max_tokens},
            **identity_fields(self.spec),
        })

    def once(self, question: str, context: list[ContextChunk], rendered) -> GenerationResult | None:
        """Cached generation, with the fallback model; None when the budget is spent."""
        key = self.cache_key(rendered)
        found = self.components.cache.get(key)
        if found is not None:
            return found
        if self.budget.exhausted:
            return None
        out = self.generator.generate(self.prompt, question, context)
        if out.error is None:
            self.components.cache.set(key, out)
        elif self.spec.fallback is not None:
            out = self._fallback(question, context, out)
        self.budget.charge((out.prompt_tokens or 0) + (out.completion_tokens or 0), self.cost(out))
        return out

    def _fallback(self, question: str, context: list[ContextChunk], failed: GenerationResult) -> GenerationResult:
        spec = self.spec.fallback_spec()
        fb = self.components.generator(spec, role="fallback").generate(self.prompt, question, context)
        if fb.error is not None:
            return failed
        # not cached under the primary's key: a resume must not take it for the primary's answer
        return GenerationResult(**{**fb.__dict__, "extra": {**fb.extra, "fallback": {
            "model": f"{spec.provider}:{spec.model}", "primary_error": failed.error}}})

    def cost(self, result: GenerationResult) -> float | None:
        if result.error is not None:
            return None
        fallback = result.extra.get("fallback") if result.extra else None
        provider, model = fallback["model"].split(":", 1) if fallback else (self.spec.provider, self.spec.model)
        return cost_usd(price_name(provider, model), result.prompt_tokens, result.completion_tokens, self.prices)


class JudgeStep:
    """The optional LLM judge: is the answer supported by the context? Asked ``repeats`` times per
    answer (distinct seeds), each verdict cached like a generation (workbench/evaluation/judge.py)."""

    def __init__(self, run: PlannedRun, plan: Plan, components: Components):
        judge = plan.experiment.spec.judge
        self.lineage, self.components = run.lineage["judge"], components
        self.specs = [judge.as_generation(i) for i in range(judge.repeats)]
        self.spec = self.specs[0]
        self.prompt = load_prompt(plan.experiment.prompt_paths[judge.prompt], JUDGE_PLACEHOLDERS)
        self.prices = load_prices()
        # Cache identity without the number of repeats: asking for more repeats reuses the verdicts
        # already given (and repeats: 1 keeps the keys judges had before repeats existed).
        config = {k: v for k, v in self.lineage.get("judge_config", {}).items() if k != "repeats"}
        self._key_lineage = {**self.lineage, "judge_config": config} if "judge_config" in self.lineage else self.lineage

    def _verdict(self, repeat: int, question: str, context: list[ContextChunk], answer: str) -> GenerationResult:
        spec = self.specs[repeat]
        base = [self._key_lineage, rendered_hash(render(self.prompt, question, context, answer))]
        key = "judge:" + hash_obj(base if repeat == 0 else [*base, {"repeat_seed": spec.seed}])
        result = self.components.cache.get(key)
        if result is None:
            result = self.components.generator(spec, role="judge").generate(self.prompt, question, context, answer=answer)
            if result.error is None:
                self.components.cache.set(key, result)
        return result

    def __call__(self, question: str, context: list[ContextChunk], answer: str, metrics: dict) -> tuple[dict, list[dict]]:
        """The question's judge metrics (:func:`verdict_metrics`), cost and latency, and the trace of
        every verdict (seed, verdict, the judge's words, error)."""
        results = [self._verdict(i, question, context, answer) for i in range(len(self.specs))]
        ok = [r for r in results if r.error is None]
        verdicts = [parse_verdict(r.answer) for r in ok]
        out = verdict_metrics(verdicts, len(results) - len(ok), metrics.get("hallucination"))
        if ok:
            costs = [cost_usd(price_name(self.spec.provider, self.spec.model), r.prompt_tokens, r.completion_tokens, self.prices) for r in ok]
            latencies = [r.latency_s for r in ok if r.latency_s is not None]
            out["judge_cost_usd"] = None if any(c is None for c in costs) else sum(costs)
            out["judge_latency_s"] = sum(latencies) / len(latencies) if latencies else None
        trace = [{"seed": spec.seed, "verdict": parse_verdict(r.answer) if r.error is None else None, "answer": r.answer[:200],
                  "error": r.error} for spec, r in zip(self.specs, results)]
        return out, trace


class SafetyStep:
    """Prompt-injection trials planted into the first ``n`` questions, PII checks and redaction."""

    def __init__(self, plan: Plan, prompt: Prompt | None):
        safety = plan.experiment.spec.safety
        self.suite: AttackSuite | None = None
        self.n_attacks = 0
        if prompt is not None and safety.injection is not None:
            self.suite = load_attack_suite(plan.experiment.attack_suite_path)
            self.n_attacks = min(safety.injection.n or len(self.suite.attacks), len(plan.queries))
            self.instructions = prompt_instruction_text(prompt.system, prompt.user, prompt.template)
        self.pii = safety.pii is not None and prompt is not None
        self.redacting = bool(safety.pii and safety.pii.store_redaction)

    def attack_for(self, position: int) -> Attack | None:
        if self.suite is None or not 0 <= position < self.n_attacks:
            return None
        return self.suite.attacks[position % len(self.suite.attacks)]

    def trial(self, step: GenerationStep, item: Retrieved) -> dict | None | bool:
        """The attacked question's answer and verdict; False when the budget ran out first."""
        a = item.attack
        question, passages = plant(a, item.query.text, [c.text for c in item.context])
        context = [ContextChunk(c.number, c.doc_id, c.title, t) for c, t in zip(item.context, passages)] or \
            [ContextChunk(1, "attack", "", passages[0])]
        res = step.once(question, context, render(step.prompt, question, context))
        if res is None:
            return False
        return {"id": a.id, "kind": a.kind, "goal": a.goal, "suite": f"{self.suite.name}-v{self.suite.version}",
                "question": question, "passage": passages[0] if a.kind == "indirect" else None,
                "answer": res.answer, "error": res.error,
                "success": None if res.error else attack_succeeded(a, res.answer, self.instructions)}


class QuestionPath:
    """Every stage object one run needs to answer its questions, built once per run."""

    def __init__(self, run: PlannedRun, plan: Plan, components: Components, budget: Budget | None = None):
        self.run, self.cfg, self.dataset = run, run.config, plan.dataset
        self.components = components
        self.retriever = components.retriever(run)
        source = components.chunk_source(run)
        self.chunks, self.max_tokens = source.chunks, source.max_tokens
        self.chunks_by_doc = self.chunks.by_doc()  # looked up per gold span (SQL), not held in memory
        self.relevance = plan.experiment.spec.relevance
        prompt = load_prompt(plan.experiment.prompt_paths[self.cfg.generation.prompt]) if self.cfg.generation else None
        self.generation = GenerationStep(run, prompt, components, budget or Budget()) if prompt else None
        self.judge = JudgeStep(run, plan, components) if prompt and plan.experiment.spec.judge else None
        self.safety = SafetyStep(plan, prompt) if plan.experiment.spec.safety is not None else None
        self.timings: dict[str, float] = defaultdict(float)
        self.rerank_fallbacks = 0
        self.costs = StageCosts(run, components)
        spec = plan.experiment.spec
        self.criteria = {m: (b.min, b.max) for m, b in spec.pass_criteria.items()}
        self.token_budget = spec.token_budget

    def _timed(self, name: str, fn: Callable, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.timings[name] += time.perf_counter() - t0

    # -- the three steps ---------------------------------------------------------------------------
    def retrieve(self, position: int, query: Query) -> Retrieved:
        item = Retrieved(position, query)
        try:
            result = self._timed("retrieval_s", self.retriever.retrieve, self.cfg.first_stage(), query)
        except ProviderError as exc:  # the query's embedding endpoint failed after its retries
            item.failed = str(exc)
            return item
        item.stage_costs = self.costs.embedding_cost(query.text)
        reranker = self.components.reranker(self.run)
        if reranker is not None:
            item.stage_costs.update(self.costs.rerank_cost(query.text, lambda: [self.chunks.indexed_text(h.chunk_id) for h in result.hits]))
            reranked = self._timed("rerank_s", reranker.rerank, query.text, result.hits)
            self.rerank_fallbacks += reranked.fallback
            item.rerank_latency_s = reranked.latency_s
            result = RetrievalResult(reranked.hits, result.latency_s + reranked.latency_s)
        item.result = result
        item.hits = [self._hit(r, h) for r, h in enumerate(result.hits, start=1)]
        if self.generation is not None:
            # the passage header: the chunk's context (title and heading path), else its document's title
            item.context = [ContextChunk(h["rank"], h["doc_id"], h.get("context") or self.dataset.docs[h["doc_id"]].title, h["text"])
                            for h in item.hits]
            item.rendered = render(self.generation.prompt, query.text, item.context)
            item.attack = self.safety.attack_for(position) if self.safety else None
        return item

    def answer(self, item: Retrieved) -> Answered | None:
        """The answer (and the attack trial, if the question carries one); None when the budget is
        spent before it (the question is left for a later run). Safe to call from worker threads."""
        out = self.generation.once(item.query.text, item.context, item.rendered)
        if out is None:
            return None
        trial = self.safety.trial(self.generation, item) if out is not None and item.attack is not None else None
        return None if trial is False else Answered(out, trial)

    def score(self, item: Retrieved, answered: Answered | None) -> dict:
        """The stored row: the question's metrics, latencies, tokens, cost and trace."""
        query, gen = item.query, answered.result if answered else None
        answer = gen.answer if gen is not None and gen.error is None else None
        relevant = self.relevant(query)
        t0 = time.perf_counter()
        metrics = question_metrics(query, relevant, item.result.hits, self.cfg.final_k, answer, [h["text"] for h in item.hits])
        metrics.update(self._chunk_metrics(query, item))
        metrics.update(item.stage_costs)
        self.timings["evaluation_s"] += time.perf_counter() - t0
        judged = None
        if self.judge is not None and answer is not None:
            judge_metrics, judged = self._timed("judge_s", self.judge, query.text, item.context, answer, metrics)
            metrics.update(judge_metrics)
        trace = self._trace(gen, answered.attack_trial if answered else None, metrics)
        if judged:
            trace["judge"] = judged  # every verdict, readable or not
        if self.safety is not None and self.safety.pii:
            metrics.update(pii_metrics(answer, [h["text"] for h in item.hits]))
        return self._row(item, gen, relevant, metrics, trace)

    # -- helpers -----------------------------------------------------------------------------------
    def _hit(self, rank: int, hit) -> dict:
        """A hit as stored: its text, and the context it was indexed with (when it has one)."""
        chunk = self.chunks.get(hit.chunk_id)
        stored = {"rank": rank, "chunk_id": hit.chunk_id, "doc_id": hit.doc_id, "score": hit.score, "text": chunk.text}
        return {**stored, "context": chunk.context} if chunk.context else stored

    def relevant(self, query: Query) -> dict[str, int]:
        return {} if query.unanswerable else self.dataset.qrels.get(query.query_id, {})

    def _chunk_metrics(self, query: Query, item: Retrieved) -> dict:
        """Chunk-level metrics where the question has gold character spans (evaluation/spans.py)."""
        gold_spans = () if query.unanswerable else self.dataset.spans.get(query.query_id, ())
        if not gold_spans:
            return {}
        rel = relevant_chunks(self.chunks_by_doc, gold_spans, self.relevance.min_overlap, self.relevance.min_chars)
        return chunk_level_metrics(query.query_id, item.result.hits, rel, cutoffs_for(self.cfg.final_k))

    def _trace(self, gen: GenerationResult | None, attack: dict | None, metrics: dict) -> dict:
        trace = {}
        if gen is not None and gen.extra.get("fallback"):
            trace["fallback"] = gen.extra["fallback"]
            metrics["fallback_used"] = 1.0
        elif gen is not None and self.cfg.generation.fallback is not None:
            metrics["fallback_used"] = 0.0
        if attack is not None:
            trace["attack"] = attack
            success = None if attack["success"] is None else float(attack["success"])
            metrics["attack_success"] = success
            metrics[f"attack_success_{attack['kind']}"] = success
        return trace

    def _row(self, item: Retrieved, gen: GenerationResult | None, relevant: dict, metrics: dict, trace: dict) -> dict:
        query = item.query
        row = {
            "run_id": self.run.run_id, "query_id": query.query_id, "position": item.position, "question": query.text,
            "gold_answers": list(query.answers), "relevant": relevant, "hits": item.hits,
            "answer": gen.answer if gen else None, "error": gen.error if gen else None,
            "retrieval_latency_s": item.result.latency_s, "rerank_latency_s": item.rerank_latency_s,
            "generation_latency_s": gen.latency_s if gen else None, "ttft_s": gen.ttft_s if gen else None,
            "prompt_tokens": gen.prompt_tokens if gen else None, "completion_tokens": gen.completion_tokens if gen else None,
            "tokens_estimated": gen.tokens_estimated if gen else None,
            "cost_usd": self.generation.cost(gen) if gen else None,
            "metrics": metrics, "trace": trace or None, "code_version": self.run.lineage.get("code_hash"),
        }
        metrics.update(kpi_metrics(row, metrics, self.criteria, self.token_budget))
        return row

    def stored(self, row: dict) -> dict:
        """A row as it is written: with ``store_redaction``, PII replaced in everything it shows."""
        return redact_row(row) if self.safety is not None and self.safety.redacting else row

    def failed_row(self, item: Retrieved) -> dict:
        """A question whose retrieval failed (its embedding endpoint is down): stored with its error."""
        q = item.query
        row = {"run_id": self.run.run_id, "query_id": q.query_id, "position": item.position, "question": q.text,
               "gold_answers": list(q.answers), "relevant": self.relevant(q), "hits": [], "answer": None,
               "error": item.failed[:500], "metrics": {}, "code_version": self.run.lineage.get("code_hash")}
        row["metrics"] = kpi_metrics(row, {}, self.criteria, None)  # a failed question did not pass
        return row

    def ask(self, position: int, query: Query) -> dict | None:
        """The whole path for one question: its row, or None when the budget is spent."""
        item = self.retrieve(position, query)
        if item.failed is not None:
            return self.stored(self.failed_row(item))
        answered = None
        if self.generation is not None:
            answered = self._timed("generation_s", self.answer, item)
            if answered is None:
                return None
        return self.stored(self.score(item, answered))


def redact_row(row: dict) -> dict:
    """``store_redaction``: PII replaced in what a stored row shows (metrics were computed before)."""
    out = dict(row)
    out["question"] = redact(row["question"])
    out["answer"] = redact(row.get("answer"))
    out["hits"] = [{**h, "text": redact(h["text"]), **({"context": redact(h["context"])} if h.get("context") else {})} for h in row["hits"]]
    if row.get("trace") and row["trace"].get("attack"):
        a = row["trace"]["attack"]
        out["trace"] = {**row["trace"], "attack": {**a, **{k: redact(a[k]) for k in ("question", "passage", "answer")}}}
    return out

