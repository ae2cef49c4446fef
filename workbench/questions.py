"""Synthetic evaluation sets: questions, answers and gold spans written by an LLM from a folder of
documents, then filtered for quality (``workbench questions generate``).

The LLM is reached through the OpenAI API like every model here (the local SmolLM2 server by
default). For each passage (a ~100-token sentence-split piece of a document, with exact offsets)
the model writes a question and a short answer copied from the passage, in JSON. LlamaIndex's
``generate_question_context_pairs``/``DatasetGenerator`` were not used: they produce questions
without answers or evidence offsets, and parse a numbered list from free text; here every
question needs an answer located in its source text.

Quality filters, in order (each rejection is counted by reason in the manifest's ``filters``):

1. ``unparseable``: no JSON with a non-empty question and answer;
2. ``answer_not_in_span``: the answer is not found in its passage, verbatim or normalised
   (case, punctuation, whitespace); the gold span is then the sentence holding the answer;
3. ``not_a_question`` (no question mark), ``answer_in_question`` (the question already
   contains its answer) and ``off_topic`` (under a quarter of the question's content words occur
   in the sentence holding the answer: "What is the meaning of life?" for "Thomas Jefferson");
4. ``duplicate``: the same question as an accepted one after normalisation, or a near duplicate
   (Jaccard similarity of their word sets at or above ``near_duplicate``, default 0.8);
5. ``closed_book``: the same LLM, asked the question *without* the document, answers it (its
   reply contains the gold answer, or has token F1 >= 0.5 with it): such a question measures the
   model's memory, not retrieval.

Difficulty is recorded per question from the share of the question's content words that appear
in its supporting sentence (easy >= 0.6 > medium >= 0.3 > hard): word-matching questions are easy
for BM25, paraphrased ones are not. Three prompt styles alternate to get a mix: ``answer_first``
(a date, number or name is taken from the passage and the LLM writes the question for it: small
models choose poor answers themselves), ``direct`` and ``paraphrase`` (the LLM picks the answer,
which must then be found in the passage); the manifest records the mix.

Unanswerable questions (``--unanswerable F``, a fraction of ``n``) are asked from a passage's
topic with the instruction to ask what the passage does not say; a candidate is kept only when no
sentence of the corpus contains 80% or more of its content words (``answerable_in_corpus``) and it
is no duplicate. They are flagged ``unanswerable`` and scored by the refusal metrics. Review them
(``workbench questions review``): the lexical check cannot prove an answer is absent.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .data.evalset import FORMAT, EvalQuestion, find_answer
from .data.types import Document, Span
from .errors import ProviderError, WorkbenchError
from .evaluation.answers import contains_gold, normalize_answer, token_f1
from .hashing import hash_obj

SYSTEM = "You write quiz questions about a text. Reply with JSON only."
PROMPTS = {
    "direct": ("Text:\n{passage}\n\nWrite one question that this text answers. The answer must be a short phrase "
               "(1 to 6 words) copied exactly from the text. Reply as JSON: {{\"question\": \"...\", \"answer\": \"...\"}}"),
    "paraphrase": ("Text:\n{passage}\n\nWrite one question that this text answers, using different words than the text "
                   "(paraphrase it). The answer must be a short phrase (1 to 6 words) copied exactly from the text. "
                   "Reply as JSON: {{\"question\": \"...\", \"answer\": \"...\"}}"),
    "answer_first": ("Sentence: {passage}\n\nWrite one question about this sentence whose answer is \"{answer}\". "
                     "Do not put the answer in the question. Reply as JSON: {{\"question\": \"...\"}}"),
    "unanswerable": ("Text:\n{passage}\n\nWrite one question on the same topic that this text does NOT answer "
                     "(ask about a fact the text does not mention). Reply as JSON: {{\"question\": \"...\"}}"),
}
CLOSED_BOOK_SYSTEM = "Answer the question in a few words. If you do not know, say \"I don't know\"."
QA_SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
             "required": ["question", "answer"]}
Q_SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"]}
OFF_TOPIC = 0.25  # a question sharing fewer of its content words with its passage is not about it
STYLES = ("answer_first", "direct", "answer_first", "paraphrase")
# Answer-first candidates (a small model picks poor answers itself): dates, numbers, and
# multi-word capitalised names, taken from the passage; the LLM writes only the question.
_ANSWER_CANDIDATE = re.compile(
    r"\b(?:(?:January|February|March|April|May|June|July|August|September|October|November|December) \d{1,2}, \d{4}"
    r"|\d[\d,]*(?:\.\d+)?(?: (?:years?|percent|days?|months?))?"
    r"|[A-Z][a-z]+(?: (?:of |the |and )?[A-Z][a-z]+)+)\b")
STOPWORDS = frozenset(
    "a an the of to in on at by for with from and or but is are was were be been being do does did what which who whom "
    "whose when where why how this that these those it its as into than then there their they he she his her him we our "
    "you your i me my not no so such can could would should will shall may might must has have had about all any some "
    "one ones very".split())


def prompt_hash() -> str:
    """Identity of the generation prompts (recorded in the manifest)."""
    return hash_obj({"system": SYSTEM, "prompts": PROMPTS, "closed_book": CLOSED_BOOK_SYSTEM}, 16)


def content_words(text: str) -> set[str]:
    return {w for w in normalize_answer(text).split() if w not in STOPWORDS}


def _dup_tokens(text: str) -> set[str]:
    # punctuation splits words ("workbench's" -> "workbench", "s"); one-letter pieces and articles go
    return {w for w in re.findall(r"[^\W_]+", text.casefold()) if len(w) > 1 and w not in ("the", "an")}


def jaccard(a: str, b: str) -> float:
    """Word-set similarity of two questions (1.0 for the same words in any order)."""
    x, y = _dup_tokens(a), _dup_tokens(b)
    return len(x & y) / len(x | y) if x | y else 1.0


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n|\n(?=[#*\-\d])")


def sentence_around(text: str, start: int, end: int) -> tuple[int, int]:
    """The sentence (or line block) of ``text`` holding ``[start, end)``: the supporting span.

    Hand-written: a regex on sentence ends and blank lines keeps the offsets exact, which an
    NLP sentence tokenizer returning strings would not."""
    left = 0
    for m in _SENTENCE_END.finditer(text, 0, start):
        left = m.end()
    m = _SENTENCE_END.search(text, end)
    right = m.start() if m else len(text)
    while left < start and text[left].isspace():
        left += 1
    return left, max(right, end)


def difficulty(question: str, support: str) -> str:
    q = content_words(question)
    if not q:
        return "easy"
    share = len(q & content_words(support)) / len(q)
    return "easy" if share >= 0.6 else "medium" if share >= 0.3 else "hard"


@dataclass
class Candidate:
    """One LLM-written question before filtering. ``passage`` is where it was written from."""

    qid: str
    text: str
    answer: str
    passage: Span
    style: str
    unanswerable: bool = False
    extra: dict = field(default_factory=dict)


@dataclass
class FilterResult:
    accepted: list[EvalQuestion]
    rejected: list[tuple[Candidate, str]]

    def questions(self) -> list[EvalQuestion]:
        """Accepted and rejected questions, in the order they were written: rejected ones are kept
        (``status: rejected`` with ``reject_reason``) so a reviewer can rescue one by editing it."""
        rejected = [EvalQuestion(c.qid, c.text, [c.answer] if c.answer else [], [c.passage], None, c.unanswerable,
                                 "rejected", "generated", {"style": c.style, "reject_reason": reason, **c.extra})
                    for c, reason in self.rejected]
        return sorted(self.accepted + rejected, key=lambda q: q.qid)

    def stats(self) -> dict:
        out: dict[str, int] = {}
        for _, reason in self.rejected:
            out[reason] = out.get(reason, 0) + 1
        return {"candidates": len(self.accepted) + len(self.rejected), "accepted": len(self.accepted), "rejected": out}


class QuestionFilter:
    """The quality filters of the module docstring, applied one candidate at a time against the
    questions accepted so far. ``closed_book`` maps a question to the LLM's answer without any
    document (None: skip that filter)."""

    def __init__(self, docs: dict[str, Document], closed_book: Callable[[str], str] | None, near_duplicate: float = 0.8):
        self.docs, self.closed_book, self.near_duplicate = docs, closed_book, near_duplicate
        self.accepted: list[EvalQuestion] = []
        self.rejected: list[tuple[Candidate, str]] = []
        self._sentences: list[set[str]] | None = None

    def _duplicate(self, text: str) -> bool:
        norm = normalize_answer(text)
        return any(normalize_answer(q.text) == norm or jaccard(q.text, text) >= self.near_duplicate for q in self.accepted)

    def _reject(self, cand: Candidate, reason: str) -> str:
        self.rejected.append((cand, reason))
        return reason

    def _answerable_in_corpus(self, text: str) -> bool:
        if self._sentences is None:
            self._sentences = [content_words(s) for d in self.docs.values() for s in _SENTENCE_END.split(d.text) if s.strip()]
        words = content_words(text)
        return bool(words) and any(len(words & s) >= 0.8 * len(words) for s in self._sentences)

    def offer(self, cand: Candidate) -> str | None:
        """Accept ``cand`` (returns None) or reject it (returns the reason)."""
        if not cand.text.strip() or (not cand.unanswerable and not cand.answer.strip()):
            return self._reject(cand, "unparseable")
        if cand.unanswerable:
            if not cand.text.rstrip().endswith("?"):
                return self._reject(cand, "not_a_question")
            if self._duplicate(cand.text):
                return self._reject(cand, "duplicate")
            if self._answerable_in_corpus(cand.text):
                return self._reject(cand, "answerable_in_corpus")
            self.accepted.append(EvalQuestion(cand.qid, cand.text.strip(), [], [], None, True, "accepted", "generated",
                                              {"style": cand.style, "source": cand.passage.as_dict(), **cand.extra}))
            return None
        doc = self.docs.get(cand.passage.doc_id)
        found = find_answer(doc.text, cand.answer, cand.passage.start, cand.passage.end) if doc else None
        if found is None:
            return self._reject(cand, "answer_not_in_span")
        if not cand.text.rstrip().endswith("?"):
            return self._reject(cand, "not_a_question")
        if content_words(cand.answer) and content_words(cand.answer) <= content_words(cand.text):
            return self._reject(cand, "answer_in_question")
        s_start, s_end = sentence_around(doc.text, *found)
        words = content_words(cand.text)
        if not words or len(words & content_words(doc.text[s_start:s_end])) < OFF_TOPIC * len(words):
            return self._reject(cand, "off_topic")
        if self._duplicate(cand.text):
            return self._reject(cand, "duplicate")
        if self.closed_book is not None:
            reply = self.closed_book(cand.text)
            if contains_gold(reply, [cand.answer]) or token_f1(reply, [cand.answer]) >= 0.5:
                cand.extra["closed_book_reply"] = reply
                return self._reject(cand, "closed_book")
        answer_text = doc.text[found[0]:found[1]]  # the answer as written in the document
        self.accepted.append(EvalQuestion(
            cand.qid, cand.text.strip(), [answer_text], [Span(doc.doc_id, s_start, s_end)],
            difficulty(cand.text, doc.text[s_start:s_end]), False, "accepted", "generated",
            {"style": cand.style, "answer_span": [found[0], found[1]], "source": cand.passage.as_dict(), **cand.extra}))
        return None

    def result(self) -> FilterResult:
        return FilterResult(list(self.accepted), list(self.rejected))


class QuestionLLM:
    """The generator model behind the OpenAI client: JSON-mode question writing and closed-book answers."""

    def __init__(self, client, model: str, *, provider: str, max_tokens: int = 96, temperature: float = 0.7, seed: int = 0):
        self.client, self.model, self.provider = client, model, provider
        self.max_tokens, self.temperature, self.seed = max_tokens, temperature, seed
        self.calls = 0

    def _chat(self, system: str, user: str, *, seed: int, json_schema: dict | None = None, max_tokens: int | None = None,
              temperature: float | None = None) -> str:
        import openai

        kwargs = {"model": self.model, "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
                  "max_tokens": max_tokens or self.max_tokens, "seed": seed, "timeout": 120,
                  "temperature": self.temperature if temperature is None else temperature}
        if json_schema is not None:
            # llama.cpp's server takes the schema inside json_object (its json_schema form fails);
            # OpenAI takes plain json_object (the prompt says which keys to write).
            kwargs["response_format"] = ({"type": "json_object", "schema": json_schema} if self.provider == "local"
                                         else {"type": "json_object"})
        self.calls += 1
        try:
            resp = self.client.chat.completions.create(**kwargs)
        except openai.OpenAIError as exc:
            raise ProviderError(f"question generation with {self.provider}:{self.model}: {type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        return (resp.choices[0].message.content or "").strip()

    def write(self, passage: str, style: str, seed: int, answer: str | None = None) -> dict:
        only_question = style in ("unanswerable", "answer_first")
        raw = self._chat(SYSTEM, PROMPTS[style].format(passage=passage, answer=answer or ""), seed=seed,
                         json_schema=Q_SCHEMA if only_question else QA_SCHEMA)
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            return {}
        if not isinstance(obj, dict):
            return {}
        if style == "answer_first":
            obj["answer"] = answer
        return obj

    def closed_book(self, question: str) -> str:
        return self._chat(CLOSED_BOOK_SYSTEM, question, seed=self.seed, max_tokens=32, temperature=0.0)


def passages(docs: dict[str, Document], chunk_tokens: int = 96) -> list[Span]:
    """Sentence-split pieces of every document (LlamaIndex SentenceSplitter), with exact offsets."""
    from .config.experiment import ChunkingSpec
    from .stages.chunking import chunk_documents
    from .stages.embedding import default_tokenizer

    spec = ChunkingSpec(splitter="sentence", chunk_size=chunk_tokens, chunk_overlap=0)
    return [Span(c.doc_id, c.start_char, c.end_char) for c in chunk_documents(docs.values(), spec, default_tokenizer())
            if c.start_char >= 0 and len(c.text.split()) >= 8]


def _s(value) -> str:
    return value.strip() if isinstance(value, str) else ""


def generate_questions(docs: dict[str, Document], llm: QuestionLLM, n: int, *, seed: int = 0, unanswerable: float = 0.0,
                       max_attempts: int | None = None, near_duplicate: float = 0.8, closed_book_check: bool = True,
                       log: Callable[[str], None] = lambda _: None) -> FilterResult:
    """Write candidates until ``n`` answerable questions pass the filters (or ``max_attempts``,
    default 3n, candidates were tried), then the unanswerable ones."""
    pieces = passages(docs)
    if not pieces:
        raise WorkbenchError("no passage of at least 8 words to write questions from")
    rng = random.Random(seed)
    order = pieces[:]
    rng.shuffle(order)
    filt = QuestionFilter(docs, llm.closed_book if closed_book_check else None, near_duplicate)
    attempts = max_attempts or 3 * n
    made = 0
    for i in range(attempts):
        if sum(not q.unanswerable for q in filt.accepted) >= n:
            break
        p = order[i % len(order)]
        style = STYLES[(i // len(order) + i) % len(STYLES)]
        text = docs[p.doc_id].text[p.start:p.end]
        answer = None
        if style == "answer_first":
            options = [m for m in _ANSWER_CANDIDATE.finditer(text) if m.start() > 0 and not text[m.start() - 1].isalnum()]
            if not options:
                style = "direct"
            else:
                m = options[rng.randrange(len(options))]
                s_start, s_end = sentence_around(text, m.start(), m.end())
                answer, text = m.group(0), text[s_start:s_end]
        obj = llm.write(text, style, seed + i, answer)
        made += 1
        reason = filt.offer(Candidate(f"q{made:04d}", _s(obj.get("question")), _s(obj.get("answer")), p, style))
        if made % 10 == 0:
            log(f"  {made} candidates, {len(filt.accepted)} accepted")
        log(f"  {'rejected (' + reason + ')' if reason else 'accepted'}: {_s(obj.get('question'))[:80]!r} -> "
            f"{_s(obj.get('answer'))[:40]!r}")
    n_unans = round(unanswerable * n)
    for j in range(3 * n_unans):
        if sum(q.unanswerable for q in filt.accepted) >= n_unans:
            break
        p = order[(j * 7 + 3) % len(order)]
        obj = llm.write(docs[p.doc_id].text[p.start:p.end], "unanswerable", seed + 100_000 + j)
        made += 1
        filt.offer(Candidate(f"q{made:04d}", _s(obj.get("question")), "", p, "unanswerable", unanswerable=True))
    return filt.result()


def build_manifest(name: str, docs_root: Path, out_dir: Path, ingestion, generator: dict, result: FilterResult) -> dict:
    import os

    rel = os.path.relpath(docs_root.resolve(), out_dir.resolve())
    return {
        "format": FORMAT, "name": name, "revision": 1,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "documents": rel, "documents_hash": ingestion.content_hash,
        "docs": {d: m.as_dict() for d, m in ingestion.meta.items()},
        "ingest": ingestion.report(),
        "generator": generator,
        "filters": result.stats(),
        "history": [{"revision": 1, "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "change": "generated"}],
    }
