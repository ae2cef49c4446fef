"""The data files an experiment names (prompt files, attack suites, the price table) are pydantic
models that reject unknown keys; errors are one line naming the file, the line and the field."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from workbench.config.files import JUDGE_PLACEHOLDERS, PLACEHOLDERS, load_attack_suite, load_price_table, load_prompt
from workbench.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
ATTACK = "{id: a, kind: direct, text: t, success: {contains: [c]}}"


def _error(tmp_path: Path, loader, text: str, name: str = "f.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        loader(path)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message
    return message.removeprefix(str(path))


@pytest.mark.parametrize("text, expected", [
    # the line of the offending key, then its field path
    ("mode: chat\nsystem: hi\nuser: '{context} {questoin} {question}'\n",
     ":3: user: unknown placeholder {questoin} (did you mean 'question'?); allowed: {context}, {question}"),
    ("description: d\nmode: chatty\nuser: '{context} {question}'\n", ":2: mode: expected 'chat' or 'completion', got 'chatty'"),
    ("mode: chat\nuser: '{context} {question}'\nusr: x\n", ":3: usr: unknown key 'usr' (did you mean 'user'?)"),
    ("mode: chat\nuser: 'Context: {context}'\n", ":2: user: the prompt never uses {question}"),
    ("mode: completion\ntemplate: '{context} {question}'\nstop: [1]\n", ":3: stop: expected a list of strings"),
    ("mode: chat\ndescription: [a]\nuser: '{context} {question}'\n", ":2: description: expected text, got list"),
    ("mode: chat\nuser: '{context} {question}'\n\n\ntemplate: x\n", ":5: template: not used in mode 'chat'"),
    ("mode: chat\nuser: [unclosed\n", ":3: cannot read the prompt file: malformed YAML"),
])
def test_prompt_errors_name_the_line_and_field(tmp_path, text, expected):
    assert _error(tmp_path, load_prompt, text).startswith(expected)


def test_judge_prompts_need_the_answer_placeholder(tmp_path):
    path = tmp_path / "judge.yaml"
    path.write_text("mode: chat\nuser: '{context} {question}'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"judge.yaml:2: user: the prompt never uses \{answer\}"):
        load_prompt(path, JUDGE_PLACEHOLDERS)
    assert load_prompt(ROOT / "experiments" / "prompts" / "judge_faithfulness.yaml", JUDGE_PLACEHOLDERS).mode == "chat"


@pytest.mark.parametrize("text, expected", [
    (f"name: x\nversion: 1\nattacks:\n  - {ATTACK}\n  - {{id: b, kind: sideways, text: t, success: {{contains: [c]}}}}\n",
     ":5: attacks[1].kind: expected one of indirect, direct, got 'sideways'"),
    (f"version: 1\nattacks:\n  - {ATTACK}\n  - {ATTACK}\n", ":4: attacks[1].id: id 'a' repeats an earlier attack"),
    (f"nmae: x\nversion: 1\nattacks: [{ATTACK}]\n", ":1: nmae: unknown key 'nmae' (did you mean 'name'?)"),
    (f"version: true\nattacks: [{ATTACK}]\n", ":1: version: expected an integer"),
    ("version: 1\nattacks: [{id: a, kind: direct, text: t, success: {contains: []}}]\n",
     ":2: attacks[0].success: expected contains and/or prompt_fragment_words"),
    ("version: 1\nattacks: [{id: a, kind: direct, text: t, success: {contains: [c], canary: x}}]\n",
     ":2: attacks[0].success.canary: unknown key 'canary'"),
])
def test_attack_suite_errors_name_the_line_and_field(tmp_path, text, expected):
    assert _error(tmp_path, load_attack_suite, text).startswith(expected)


@pytest.mark.parametrize("text, expected", [
    ("updated: 2026-01-01\nmodels:\n  m: {input_per_1m_usd: 1}\n", ":3: models.m: needs input_per_1m_usd and output_per_1m_usd"),
    ("models:\n  m: {input_per_1m_usd: 1, output_per_1m_usd: true}\n", ":2: models.m.output_per_1m_usd: expected a non-negative number"),
    ("modles:\n  m: {input_per_1m_usd: 1, output_per_1m_usd: 1}\n", ":1: modles: unknown key 'modles' (did you mean 'models'?)"),
    ("source: [a]\nmodels: {}\n", ":1: source: expected a date (YYYY-MM-DD) or text"),
])
def test_price_table_errors_name_the_line_and_field(tmp_path, text, expected):
    assert _error(tmp_path, load_price_table, text, "prices.yaml").startswith(expected)


def test_the_shipped_files_validate():
    table = load_price_table(ROOT / "workbench" / "providers" / "prices.yaml")
    assert isinstance(table.updated, dt.date) and table.models["gpt-4o-mini"].input_per_1m_usd == pytest.approx(0.15)
    suite = load_attack_suite(ROOT / "data" / "attacks" / "injection-v1.yaml")
    assert suite.name == "injection" and len({a.id for a in suite.attacks}) == len(suite.attacks)
    for path in sorted((ROOT / "experiments" / "prompts").glob("*.yaml")):
        load_prompt(path, JUDGE_PLACEHOLDERS if path.stem.startswith("judge") else PLACEHOLDERS)
