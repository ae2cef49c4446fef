"""Answer metrics: SQuAD exact match and F1, gold containment, citations, support, refusals.

``normalize_answer``, ``exact_match`` and ``token_f1`` reimplement the ~30 lines of the official
SQuAD v1.1 ``evaluate-v1.1.py`` (Rajpurkar et al., 2016) line for line, because no maintained
package ships that script for offline use. Keeping its exact normalisation (lowercase, drop
``string.punctuation``, drop the articles a/an/the, collapse whitespace) is what makes our EM/F1
comparable with published numbers; do not "improve" it.

The other metrics are heuristics for RAG answers that SQuAD does not cover. Each returns ``None``
(never NaN) when it does not apply, so callers can count the not-applicable rows separately
instead of averaging them in as zeros.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TypedDict

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")

# One citation marker: "[1]" or "[1, 3]"; adjacent markers ("[1][2]") are separate matches.
_CITATION = re.compile(r"\[\s*(\d+(?:\s*,\s*\d+)*)\s*\]")

# Function words that carry no claim; answer_support ignores them (articles are already gone
# after normalize_answer). Deliberately small: a long list would hide unsupported content.
SUPPORT_STOPWORDS: frozenset[str] = frozenset(
    """
    i me my we our you your he him his she her it its they them their this that these those
    is are was were be been being am do does did have has had having will would shall should
    can could may might must of in on at to for from by with about as into onto over under
    and or but nor so if then than also not no yes there here which who whom whose what when
    where why how all any both each some such only very just
    """.split()
)

# Case-insensitive regexes that mark an answer as a refusal. They are matched after curly
# apostrophes are straightened, so "don’t" and "don't" both match.
REFUSAL_PATTERNS: tuple[str, ...] = (
    r"\bi (?:do not|don't|dont) know\b",
    r"\b(?:cannot|can't|can not|could not|couldn't|unable to|not able to) "
    r"(?:answer|determine|tell|find|say|provide)\b",
    r"\bnot (?:mentioned|stated|found|provided|present|included|given|specified|available) "
    r"in the (?:given |provided |supplied )?(?:context|documents?|passages?|sources?|text)\b",
    r"\b(?:is not|isn't|not) (?:in|within) the (?:given |provided |supplied )?"
    r"(?:context|documents?|passages?|sources?|text)\b",
    r"\b(?:context|documents?|passages?|sources?|text) (?:does not|doesn't|do not|don't) "
    r"(?:contain|mention|provide|say|include|specify|state)\b",
    r"\bno (?:relevant |such |specific )?information\b",
    r"\b(?:not enough|insufficient) (?:information|context)\b",
)
_REFUSAL = re.compile("|".join(f"(?:{p})" for p in REFUSAL_PATTERNS), re.IGNORECASE)


class CitationMetrics(TypedDict):
    """The result of :func:`citation_metrics`; ``None`` means "not applicable"."""

    citation_count: int
    citation_valid: float | None
    citation_accuracy: float | None


def normalize_answer(s: str) -> str:
    """Normalise text exactly as the official SQuAD v1.1 script does.

    Lowercase, remove punctuation, remove the articles a/an/the, collapse whitespace; the order
    of the steps is the script's and matters (punctuation goes before articles are matched).
    """
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, golds: str | Iterable[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer, else 0.0 (SQuAD EM).

    Raises:
        ValueError: ``golds`` is empty; a question without gold answers cannot be scored.
    """
    pred = normalize_answer(prediction)
    return max(float(pred == normalize_answer(gold)) for gold in _gold_list(golds))


def token_f1(prediction: str, golds: str | Iterable[str]) -> float:
    """SQuAD token F1: the best, over gold answers, of the bag-of-tokens F1 with the prediction.

    For one gold, with ``same`` the size of the multiset intersection of the normalised tokens,
    precision = same / len(prediction tokens), recall = same / len(gold tokens), and
    F1 = 2PR / (P + R); 0.0 when nothing is shared (also when both sides normalise to empty,
    as in the official script).

    Raises:
        ValueError: ``golds`` is empty.
    """
    pred_tokens = normalize_answer(prediction).split()
    return max(_f1_one(pred_tokens, normalize_answer(gold).split()) for gold in _gold_list(golds))


def contains_gold(prediction: str, golds: str | Iterable[str]) -> float:
    """1.0 when some normalised gold answer occurs inside the normalised prediction, else 0.0.

    Generated answers are sentences, not spans, so EM is near zero for a correct but wordy
    answer; containment credits "It was built in 1889." for gold "1889". The match is on whole
    tokens ("10" does not match "100"), and a gold that normalises to nothing (e.g. "The") never
    matches, since the empty string is inside every answer.

    Raises:
        ValueError: ``golds`` is empty.
    """
    padded = f" {normalize_answer(prediction)} "
    return max(
        float(bool(gold) and f" {gold} " in padded)
        for gold in (normalize_answer(g) for g in _gold_list(golds))
    )


def parse_citations(answer: str) -> list[int]:
    """Return the numbers cited as ``[1]``, ``[1, 3]`` or ``[1][2]``: unique, in order of first use.

    Order is kept so that "the first source the answer relies on" stays recoverable; duplicates
    are dropped because citing a source twice does not make it twice as supported.
    """
    seen: dict[int, None] = {}
    for match in _CITATION.finditer(answer):
        for number in match.group(1).split(","):
            seen.setdefault(int(number), None)
    return list(seen)


def citation_metrics(
    cited: Sequence[int], chunk_doc_ids: Sequence[str], relevant_doc_ids: set[str] | frozenset[str]
) -> CitationMetrics:
    """Check an answer's citations against the numbered chunks it was given.

    Citation numbers are 1-based positions in the context shown to the model, so ``cited[i] = n``
    refers to ``chunk_doc_ids[n - 1]``.

    Args:
        cited: The numbers the answer cites (duplicates are counted once).
        chunk_doc_ids: The doc_id of each chunk, in the order the chunks were numbered.
        relevant_doc_ids: The doc_ids judged relevant for the question (grade >= 1).

    Returns:
        ``citation_count``: how many distinct numbers were cited.
        ``citation_valid``: 1.0 if every cited number names a chunk that exists, else 0.0;
        ``None`` if nothing was cited (an uncited answer is not an invalid one).
        ``citation_accuracy``: the share of valid citations whose chunk comes from a relevant
        document; ``None`` if no citation was valid.
    """
    unique = list(dict.fromkeys(cited))
    valid = [n for n in unique if 1 <= n <= len(chunk_doc_ids)]
    return CitationMetrics(
        citation_count=len(unique),
        citation_valid=None if not unique else float(len(valid) == len(unique)),
        citation_accuracy=(
            None
            if not valid
            else sum(chunk_doc_ids[n - 1] in relevant_doc_ids for n in valid) / len(valid)
        ),
    )


def answer_support(answer: str, contexts: Sequence[str]) -> float | None:
    """Share of the answer's content tokens that occur somewhere in the retrieved contexts.

    A cheap, model-free proxy for groundedness: an answer whose words are absent from every
    context was likely produced from the model's memory. Tokens are SQuAD-normalised; citation
    markers and :data:`SUPPORT_STOPWORDS` are ignored. Token overlap cannot see paraphrase or
    negation, so treat it as a screening signal, not a faithfulness verdict.

    Returns:
        A value in [0, 1], or ``None`` when the answer has no content tokens (empty, or only
        stopwords and citation markers), since there is then nothing to support.
    """
    words = normalize_answer(_CITATION.sub(" ", answer)).split()
    tokens = [t for t in words if t not in SUPPORT_STOPWORDS]
    if not tokens:
        return None
    context_tokens = {t for context in contexts for t in normalize_answer(context).split()}
    return sum(t in context_tokens for t in tokens) / len(tokens)


def is_refusal(answer: str) -> bool:
    """True when the answer declines to answer ("I don't know", "not in the context", ...).

    Refusals are scored apart from wrong answers: refusing on an unanswerable question is right,
    and a system that refuses often trades accuracy for safety. See :data:`REFUSAL_PATTERNS`.
    """
    return _REFUSAL.search(answer.replace("\u2019", "'")) is not None


def _gold_list(golds: str | Iterable[str]) -> list[str]:
    gold_list = [golds] if isinstance(golds, str) else list(golds)
    if not gold_list:
        raise ValueError("at least one gold answer is required")
    return gold_list


def _f1_one(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)
