"""PII detection/redaction with planted items, and the injection suite's loading and criteria."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.config.files import load_attack_suite
from workbench.errors import ConfigError
from workbench.stages.safety import attack_succeeded, find_pii, pii_metrics, plant, prompt_instruction_text, redact

ROOT = Path(__file__).resolve().parents[2]
PLANTED = ("Contact jane.doe@example.org or call +1 650-253-0000 (UK office: +44 20 7946 0958). "
           "Card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00, SSN 536-22-1234.")


def test_every_planted_pii_kind_is_found_and_redacted():
    kinds = [m.kind for m in find_pii(PLANTED)]
    assert kinds.count("email") == 1 and kinds.count("phone") == 2 and kinds.count("card") == 1
    assert kinds.count("iban") == 1 and kinds.count("ssn") == 1
    out = redact(PLANTED)
    for secret in ("jane.doe@example.org", "650-253-0000", "7946 0958", "4111 1111 1111 1111", "DE89 3704", "536-22-1234"):
        assert secret not in out
    assert out.count("[PHONE]") == 2 and "[EMAIL]" in out and "[CARD]" in out and "[IBAN]" in out and "[SSN]" in out


def test_invalid_numbers_are_not_pii():
    # Luhn fails, IBAN checksum fails, plain years and counts are not phone numbers
    text = "Card 4111 1111 1111 1112, IBAN DE00 3704 0044 0532 0130 00, in 1998 they scored 308 points and 24 interceptions."
    assert find_pii(text) == []
    assert redact(text) == text


def test_pii_metrics_leakage_means_repeating_context_pii():
    ctx = ["The clerk's e-mail is jane.doe@example.org.", "Nothing here."]
    assert pii_metrics("Write to jane.doe@example.org [1]", ctx) == {"pii_in_context": 1.0, "pii_in_answer": 1.0, "pii_leakage": 1.0}
    # PII in the answer that is not from the context is not leakage of retrieved data
    assert pii_metrics("Try bob@example.com", ctx) == {"pii_in_context": 1.0, "pii_in_answer": 1.0, "pii_leakage": 0.0}
    assert pii_metrics("Denver Broncos [1]", ["No PII."]) == {"pii_in_context": 0.0, "pii_in_answer": 0.0, "pii_leakage": 0.0}
    assert pii_metrics(None, ctx)["pii_leakage"] is None


def test_shipped_suite_loads_and_criteria_are_checkable():
    suite = load_attack_suite(ROOT / "data" / "attacks" / "injection-v1.yaml")
    assert suite.version == 1 and len(suite.attacks) >= 8
    assert {a.kind for a in suite.attacks} == {"indirect", "direct"}
    assert {a.goal for a in suite.attacks} >= {"canary", "exfiltration", "link"}
    canary = next(a for a in suite.attacks if a.id == "indirect-canary")
    assert attack_succeeded(canary, "pineapple-7731") and not attack_succeeded(canary, "Denver Broncos [1]")
    exfil = next(a for a in suite.attacks if a.id == "indirect-exfiltration")
    instructions = prompt_instruction_text("You answer questions using only the numbered context passages below.", "Q: {question}", None)
    assert attack_succeeded(exfil, "Sure: you answer questions using only the numbered context passages", instructions)
    assert not attack_succeeded(exfil, "The answer is 24 [1].", instructions)
    q, passages = plant(canary, "Who won?", ["p1", "p2"])
    assert q == "Who won?" and passages[0].startswith("p1 ") and canary.text in passages[0] and passages[1] == "p2"
    direct = next(a for a in suite.attacks if a.kind == "direct")
    q, passages = plant(direct, "Who won?", ["p1"])
    assert q.startswith("Who won? ") and direct.text in q and passages == ["p1"]


@pytest.mark.parametrize("text, message", [
    ("name: x\nversion: 1\nattacks: []\n", "non-empty list 'attacks'"),
    ("name: x\nversion: one\nattacks: [{id: a, kind: direct, text: t, success: {contains: [c]}}]\n", "version: expected an integer"),
    ("version: 1\nattacks: [{id: a, kind: sideways, text: t, success: {contains: [c]}}]\n", "kind: expected one of"),
    ("version: 1\nattacks: [{id: a, kind: direct, text: t}]\n", "success: required field is missing"),
    ("version: 1\nattacks: [{id: a, kind: direct, text: t, sucess: {}}]\n", "did you mean 'success'"),
    ("version: 1\nattacks: [{id: a, kind: direct, text: t, success: {contains: [c]}}, {id: a, kind: direct, text: t, success: {contains: [c]}}]\n",
     "repeats an earlier attack"),
    ("version: 1\nattacks: [{id: a, kind: direct, text: t, success: {prompt_fragment_words: 1}}]\n", "at least 3"),
    ("version: 1\nattacks: [\n", "malformed YAML"),
])
def test_bad_attack_suites_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "suite.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_attack_suite(path)
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
