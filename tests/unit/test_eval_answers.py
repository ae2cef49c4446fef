"""Answer metrics: SQuAD v1.1 EM/F1 semantics, containment, citations, support, refusals."""

from __future__ import annotations

import pytest

from workbench.evaluation.answers import (
    REFUSAL_PATTERNS,
    answer_support,
    citation_metrics,
    contains_gold,
    exact_match,
    is_refusal,
    normalize_answer,
    parse_citations,
    token_f1,
)

# --- normalize_answer: the official script's four steps ---------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Denver Broncos", "denver broncos"),
        ("  Denver   Broncos!\n", "denver broncos"),
        ("Levi's Stadium", "levis stadium"),  # punctuation removed inside words, not split on
        ("a theatre, an apple and the end", "theatre apple and end"),  # articles: whole words
        ("Theory of everything", "theory of everything"),
        ("the-end", "theend"),  # punctuation goes first, so "the" is no longer a word
        ("THE", ""),
        ("", ""),
        ("1,000", "1000"),
    ],
)
def test_normalize_answer_follows_squad(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


# --- exact_match -----------------------------------------------------------------------------


def test_exact_match_ignores_articles_case_and_punctuation() -> None:
    assert exact_match("the Denver Broncos", ["Denver Broncos"]) == 1.0
    assert exact_match("Denver Broncos.", ["denver broncos"]) == 1.0


def test_exact_match_is_zero_for_a_partial_answer() -> None:
    assert exact_match("Denver", ["Denver Broncos"]) == 0.0


def test_exact_match_takes_the_max_over_golds() -> None:
    assert exact_match("Santa Clara", ["Levi's Stadium", "Santa Clara", "Santa Clara, CA"]) == 1.0


def test_exact_match_accepts_a_single_gold_string() -> None:
    assert exact_match("Denver Broncos", "Denver Broncos") == 1.0


def test_exact_match_of_two_empty_strings_is_one_as_in_the_official_script() -> None:
    assert exact_match("", [""]) == 1.0


# --- token_f1 ------------------------------------------------------------------------------------


def test_token_f1_partial_overlap() -> None:
    # pred [denver], gold [denver, broncos]: P = 1/1, R = 1/2
    p, r = 1 / 1, 1 / 2
    assert token_f1("Denver", ["Denver Broncos"]) == pytest.approx(2 * p * r / (p + r))  # 2/3


def test_token_f1_is_bag_of_words() -> None:
    # pred [broncos, of, denver], gold [denver, broncos]: same = 2, P = 2/3, R = 2/2
    p, r = 2 / 3, 2 / 2
    assert token_f1("the Broncos of Denver", ["Denver Broncos"]) == pytest.approx(
        2 * p * r / (p + r)  # 4/5
    )


def test_token_f1_counts_repeated_tokens_as_a_multiset() -> None:
    # pred [x, x, y], gold [x, y, y]: intersection {x: 1, y: 1}, same = 2, P = 2/3, R = 2/3
    assert token_f1("x x y", ["x y y"]) == pytest.approx(2 / 3)


def test_token_f1_takes_the_max_over_golds() -> None:
    # gold 1 shares nothing; gold 2 [santa, clara, california]: P = 2/2, R = 2/3
    p, r = 2 / 2, 2 / 3
    assert token_f1("Santa Clara", ["Levi's Stadium", "Santa Clara, California"]) == pytest.approx(
        2 * p * r / (p + r)  # 4/5
    )


def test_token_f1_is_zero_without_overlap_and_for_two_empty_answers() -> None:
    assert token_f1("Paris", ["London"]) == 0.0
    assert token_f1("The", ["a"]) == 0.0  # both normalise to empty: 0, as in the official script


def test_token_f1_exact_answer_is_one() -> None:
    assert token_f1("the Denver Broncos", ["Denver Broncos"]) == 1.0


@pytest.mark.parametrize("metric", [exact_match, token_f1, contains_gold])
def test_answer_metrics_reject_missing_golds(metric) -> None:
    with pytest.raises(ValueError, match="gold"):
        metric("Denver", [])


# --- contains_gold -------------------------------------------------------------------------------


def test_contains_gold_credits_a_wordy_correct_answer() -> None:
    assert contains_gold("The tower was finished in 1889 [2].", ["1889"]) == 1.0
    assert contains_gold("It was won by the Denver Broncos.", ["Denver Broncos"]) == 1.0


def test_contains_gold_matches_whole_tokens_only() -> None:
    assert contains_gold("About 100 people came.", ["10"]) == 0.0


def test_contains_gold_any_gold_counts() -> None:
    assert contains_gold("It is in Santa Clara.", ["Levi's Stadium", "Santa Clara"]) == 1.0


def test_contains_gold_ignores_golds_that_normalise_to_nothing() -> None:
    assert contains_gold("Anything at all", ["The", "!"]) == 0.0


# --- parse_citations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Paris [2] is the capital [1].", [2, 1]),
        ("See [1, 3] and [3][2].", [1, 3, 2]),
        ("Adjacent [1][2] markers.", [1, 2]),
        ("Spaces [ 4 ,5 ] too.", [4, 5]),
        ("Repeated [1] and [1].", [1]),
        ("No citations here (1) or [a].", []),
        ("", []),
    ],
)
def test_parse_citations(answer: str, expected: list[int]) -> None:
    assert parse_citations(answer) == expected


# --- citation_metrics ----------------------------------------------------------------------------


def test_citation_metrics_all_valid_some_relevant() -> None:
    # chunks 1..3 come from d1, d2, d1; d1 is relevant; cited 1 and 2 -> 1 of 2 relevant
    result = citation_metrics([1, 2], ["d1", "d2", "d1"], {"d1"})
    assert result == {"citation_count": 2, "citation_valid": 1.0, "citation_accuracy": 1 / 2}


def test_citation_metrics_an_out_of_range_citation_makes_the_answer_invalid() -> None:
    # [4] and [0] name no chunk; accuracy is over the valid citations only: [3] -> d1, relevant
    result = citation_metrics([3, 4, 0], ["d2", "d2", "d1"], {"d1"})
    assert result == {"citation_count": 3, "citation_valid": 0.0, "citation_accuracy": 1 / 1}


def test_citation_metrics_nothing_cited_is_not_applicable() -> None:
    result = citation_metrics([], ["d1"], {"d1"})
    assert result == {"citation_count": 0, "citation_valid": None, "citation_accuracy": None}


def test_citation_metrics_no_valid_citation_has_no_accuracy() -> None:
    result = citation_metrics([5], ["d1"], {"d1"})
    assert result == {"citation_count": 1, "citation_valid": 0.0, "citation_accuracy": None}


def test_citation_metrics_counts_a_repeated_citation_once() -> None:
    result = citation_metrics([1, 1, 2], ["d1", "d2"], {"d2"})
    assert result == {"citation_count": 2, "citation_valid": 1.0, "citation_accuracy": 1 / 2}


# --- answer_support ------------------------------------------------------------------------------


def test_answer_support_share_of_content_tokens_found_in_contexts() -> None:
    # content tokens [eiffel, tower, completed, 1889]; "1889" is in no context -> 3/4
    answer = "The Eiffel Tower was completed in 1889 [1]."
    contexts = ["The Eiffel tower, completed", "in Paris"]
    assert answer_support(answer, contexts) == pytest.approx(3 / 4)


def test_answer_support_ignores_citation_numbers() -> None:
    # without stripping, "[1]" would add a token "1" that no context holds
    assert answer_support("Paris [1]", ["Paris is the capital."]) == 1.0


def test_answer_support_is_none_without_content_tokens() -> None:
    assert answer_support("", ["anything"]) is None
    assert answer_support("It is. [2]", ["anything"]) is None


def test_answer_support_without_contexts_is_zero() -> None:
    assert answer_support("Paris", []) == 0.0


# --- is_refusal ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        "I don't know.",
        "I do not know the answer.",
        "I don\u2019t know",  # curly apostrophe
        "I cannot answer this question from the given documents.",
        "I'm unable to determine that.",
        "The answer is not in the context.",
        "This is not mentioned in the provided context.",
        "The context does not contain that information.",
        "There is no information about this.",
        "Not enough information to answer.",
        "SORRY, I CAN'T ANSWER THAT.",
    ],
)
def test_is_refusal_detects_refusals(answer: str) -> None:
    assert is_refusal(answer)


@pytest.mark.parametrize(
    "answer",
    [
        "The Denver Broncos won Super Bowl 50.",
        "Paris is the capital of France [1].",
        "Nobody knows who built it, but the context says it dates from 1200.",
        "",
    ],
)
def test_is_refusal_leaves_answers_alone(answer: str) -> None:
    assert not is_refusal(answer)


def test_refusal_patterns_are_a_public_tuple_of_strings() -> None:
    assert isinstance(REFUSAL_PATTERNS, tuple)
    assert all(isinstance(p, str) for p in REFUSAL_PATTERNS)
