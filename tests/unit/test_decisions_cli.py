"""``workbench compare --all`` (every pair, Holm across the family), ``workbench compare`` (Holm across
its metrics) and ``workbench power`` (questions needed), through the real command on a hand-made store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.unit.test_gates import cli, write_runs
from workbench import compare
from workbench.evaluation import power
from workbench.evaluation.stats import holm, paired_difference
from workbench.store import Store

RNG = np.random.default_rng(11)
BASE = RNG.uniform(0.2, 0.8, 40)
RUNS = {f"run{i}": {"ndcg_at_10": list(np.clip(BASE + shift + RNG.normal(0, 0.1, 40), 0, 1)),
                    "hit_at_1": [float(x) for x in RNG.uniform(0, 1, 40) < 0.4 + shift]} for i, shift in enumerate((0.0, 0.02, 0.3))}


@pytest.fixture
def store(tmp_path) -> Store:
    return write_runs(Store(f"sqlite:///{tmp_path / 'wb.sqlite'}"), "exp", RUNS)


def test_compare_all_holm_corrects_across_every_pair(store):
    res = cli(store, "compare", "--all", "exp", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert [r["run_id"] for r in data["runs"]] == ["run2", "run1", "run0"]  # best first by nDCG@10
    pairs = {(p["run_a"], p["run_b"]): p for p in data["pairs"]}
    assert set(pairs) == {("run2", "run1"), ("run2", "run0"), ("run1", "run0")} and data["correction"]["family"] == 3
    # each p is the paired test's, and the family is Holm-corrected by hand
    raw = [paired_difference(RUNS[a]["ndcg_at_10"], RUNS[b]["ndcg_at_10"]).p_value for a, b in pairs]
    assert [p["p_value"] for p in pairs.values()] == pytest.approx(raw)
    assert [p["p_holm"] for p in pairs.values()] == pytest.approx(holm(raw))
    assert pairs[("run2", "run0")]["significant"] and not pairs[("run1", "run0")]["significant"]
    # the library function gives the same table
    lib = compare.all_pairs(store, "exp")
    assert lib[["run_a", "run_b"]].values.tolist() == [list(k) for k in pairs] and lib["p_holm"].tolist() == pytest.approx(holm(raw))
    # two metrics: one family of 6
    both = json.loads(cli(store, "compare", "--all", "exp", "-m", "ndcg_at_10", "-m", "hit_at_1", "--json").stdout)
    assert both["correction"]["family"] == 6 and len(both["pairs"]) == 6
    text = cli(store, "compare", "--all", "exp")
    assert "row - column" in text.stdout and "Holm-corrected across all 3 comparisons" in text.stdout
    assert cli(store, "compare", "--all", "nope").returncode == 2


def test_compare_two_runs_corrects_across_its_metrics(store):
    df = compare.compare_runs(store, "run0", "run1")
    assert df["p_holm"].tolist() == pytest.approx(holm(df["p_value"].tolist()))
    res = cli(store, "compare", "run0", "run1")
    assert "p (Holm)" in res.stdout and f"corrected across the {len(df)} metrics compared" in res.stdout
    missing = cli(store, "compare", "run0")
    assert missing.returncode == 2 and "compare needs two runs" in missing.stderr


def test_power_answers_how_many_questions(store):
    res = cli(store, "power", "exp", "--metric", "ndcg_at_10", "--delta", "0.03", "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    by_run = {p["run_id"]: p for p in data["pairs"]}
    best = np.array(RUNS["run2"]["ndcg_at_10"])
    for run_id in ("run0", "run1"):
        sd = float(np.std(np.array(RUNS[run_id]["ndcg_at_10"]) - best, ddof=1))
        assert by_run[run_id]["sd"] == pytest.approx(sd)
        assert by_run[run_id]["needed"] == power.questions_needed(sd, 0.03)
        assert by_run[run_id]["detectable"] == pytest.approx(power.detectable_difference(sd, 40))
    assert data["needed_max"] == max(p["needed"] for p in data["pairs"]) and data["questions_now"] == 40
    text = cli(store, "power", "exp", "--delta", "0.03").stdout
    assert f"To detect a difference of 0.03: about {data['needed_max']} questions" in text and "you have 40" in text
    bad = cli(store, "power", "exp", "--metric", "ndcg_at_11")
    assert bad.returncode == 2 and "unknown metric" in bad.stderr
