"""The adaptive bake-off with seeded fakes: a race through the run core, what it stores, its resume,
the report's replay of it, staged pruning, constraints, `workbench plan` and the search: errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.conftest import ROOT, write_xquad_slice
from workbench.cli import app
from workbench.config import load_experiment
from workbench.errors import ConfigError
from workbench.pipeline import race as race_mod
from workbench.pipeline.plan import plan_experiment, retrieval_twin
from workbench.pipeline.race import race_experiment
from workbench.report.data import load_report
from workbench.report.html import leaderboard_html
from workbench.report.leaderboard import sort_board
from workbench.report.race import load_race, race_section_html
from workbench.settings import Workspace
from workbench.store import Store
from workbench.testing import FAKE_BASE_URL, fake_components

PROMPT = ROOT / "experiments" / "prompts" / "grounded_qa.yaml"
EMB = f"{{provider: openai_compatible, model: fake-embedder, base_url: '{FAKE_BASE_URL}'}}"
GEN = f"{{provider: openai_compatible, model: fake-llm, base_url: '{FAKE_BASE_URL}', prompt: {PROMPT}, max_tokens: 32}}"
RACE = "search: {strategy: race, metric: contains_gold, margin: 0.05, round: 10, min_questions: 10, seed: 3}"


def _experiment(tmp_path: Path, search: str = RACE, n_queries: int = 120, name: str = "race") -> Path:
    data = tmp_path / "data"
    if not data.exists():
        write_xquad_slice(data, n_docs=40, n_queries=n_queries)
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""name: {name}
dataset: {data}
grid:
  chunking: [{{splitter: sentence, chunk_size: 64, chunk_overlap: 8}}, {{splitter: token, chunk_size: 8, chunk_overlap: 0}}]
  embedding: [{EMB}]
  retrieval: [{{method: bm25, top_k: 3}}, {{method: dense, top_k: 1}}]
  generation: [{GEN}]
{search}
""", encoding="utf-8")
    return path


def _ws(tmp_path: Path, tag: str = "a") -> Workspace:
    return Workspace.resolve(store=f"sqlite:///{tmp_path / f'{tag}.sqlite'}", cache_dir=tmp_path / f"cache-{tag}",
                             reports_dir=tmp_path / "reports", threads=1, root=tmp_path)


def _race(path: Path, ws: Workspace) -> list[dict]:
    plan = plan_experiment(load_experiment(path), ws)
    return race_experiment(plan, ws, components=fake_components(plan, ws))


def _rows(ws: Workspace, run_ids) -> pd.DataFrame:
    st = Store(ws.store_url)
    frames = [st.questions(r) for r in run_ids]
    out = pd.concat(frames).sort_values(["run_id", "query_id"]).reset_index(drop=True)
    return out.drop(columns=["retrieval_latency_s", "generation_latency_s", "ttft_s"])


@pytest.fixture(scope="module")
def raced(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("race")
    ws = _ws(tmp)
    path = _experiment(tmp)
    _race(path, ws)
    return tmp, ws, path


def test_a_race_stores_eliminations_with_their_evidence(raced):
    tmp, ws, _ = raced
    board = Store(ws.store_url).leaderboard("race")
    statuses = dict(zip(board["chunking"] + " " + board["retrieval"], board["status"]))
    assert statuses["token 8/0 +title bm25@3"] == "eliminated" and statuses["token 8/0 +title dense@1"] == "eliminated"
    assert statuses["sentence 64/8 +title bm25@3"] == "complete"
    out = board[board["status"] == "eliminated"].iloc[0]
    e = out["evidence"]["race"]
    assert e["reason"] == "worse" and e["upper"] < -0.05 and e["diff"] < e["upper"] and e["metric"] == "contains_gold"
    assert e["n_questions"] == out["n_questions"] and out["n_planned"] == 120
    assert e["pair_alpha"] == pytest.approx(0.05 / 6) and e["round"] * 10 == e["n_questions"]
    winner = board[board["evidence"].map(lambda v: (v or {}).get("race", {}).get("winner", False))]
    assert list(winner["retrieval"]) == ["bm25@3"] and list(winner["chunking"]) == ["sentence 64/8 +title"]


def test_results_json_shows_status_and_questions_evaluated(raced):
    tmp, ws, _ = raced
    res = CliRunner().invoke(app, ["results", "race", "--store", ws.store_url, "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    counts = {r["run_id"]: len(Store(ws.store_url).questions(r["run_id"])) for r in rows}
    assert all(r["n_questions"] == counts[r["run_id"]] and r["n_planned"] == 120 for r in rows)
    assert {r["status"] for r in rows} == {"complete", "eliminated"}
    assert any(r["n_questions"] < 120 for r in rows if r["status"] == "eliminated")
    assert all(r["evidence"]["race"]["stage"] in ("race", "retrieval") for r in rows if r["status"] == "eliminated")  # why it left


def test_eliminated_runs_are_ranked_after_the_runs_that_saw_every_question(raced):
    tmp, ws, _ = raced
    board = sort_board(Store(ws.store_url).leaderboard("race"))
    assert list(board["status"]) == ["complete", "complete", "eliminated", "eliminated"]
    data = load_report(ws.store_url, "race")
    assert data.recommendation.run_id == board.iloc[0]["run_id"]
    html = leaderboard_html(data)
    assert html.count('<span class="badge out" title="eliminated by the race') == 2 and html.count(">–</td>") == 2


def _board_lines(ws: Workspace, monkeypatch) -> list[str]:
    monkeypatch.setenv("COLUMNS", "100")
    res = CliRunner().invoke(app, ["results", "race", "--store", ws.store_url])
    assert res.exit_code == 0, res.output
    return res.output.splitlines()


def test_the_terminal_board_says_out_and_why_for_eliminated_runs(raced, monkeypatch):
    tmp, ws, _ = raced
    lines = _board_lines(ws, monkeypatch)
    board = Store(ws.store_url).leaderboard("race")
    for _, r in board.iterrows():
        line = next(line for line in lines if f" {r['run_id'][:8]} " in line)
        e = r["evidence"]["race"]
        if r["status"] == "eliminated":  # no value over the questions it saw, which would read as comparable
            assert line.split()[0] == "out" and f"out round {e['round']}, {e['n_questions']} q" in line and "[" not in line
        else:
            assert line.split()[0] in ("1", "2", "2=") and "[" in line
    assert all(len(line) <= 100 for line in lines)
    assert "out: eliminated by the race" in " ".join(" ".join(lines).split())


def test_the_report_replays_the_stored_race_and_decides_the_same(raced):
    tmp, ws, _ = raced
    data = load_report(ws.store_url, "race")
    race = load_race(Store(ws.store_url), data.spec, data.board, data.values)
    stored = {r: e["race"] for r, e in zip(data.board["run_id"], data.board["evidence"]) if e["race"].get("reason")}
    assert set(race.result.eliminated) == set(stored)
    for run_id, e in race.result.eliminated.items():
        assert (e.round, e.n_questions, e.upper) == (stored[run_id]["round"], stored[run_id]["n_questions"], pytest.approx(stored[run_id]["upper"]))
    assert race.saved["calls_used"] == int(data.board["n_questions"].sum()) < race.saved["calls_full"] == 480
    html = race_section_html(data)
    assert "<h2>Race</h2>" in html and "Who left, when and why" in html and "data:image/png;base64" in html
    assert html.count("&lt; -0.05") == len(stored)  # one reason per eliminated configuration


def test_a_race_interrupted_mid_round_and_resumed_equals_an_uninterrupted_one(raced, tmp_path, monkeypatch):
    """The interrupted race dies after two batches of its third round (as after a kill); the next
    run replays the stored rounds, computes only what is missing, and ends with the same rows,
    statuses and evidence as the uninterrupted race of the module fixture."""
    tmp, ws_clean, path = raced
    ws = _ws(tmp_path, "killed")
    calls = {"n": 0}
    original = race_mod.RunSession.compute

    def dying(self, items=None):
        calls["n"] += 1
        if calls["n"] == 10:  # round 3, third run
            raise KeyboardInterrupt
        return original(self, items)

    monkeypatch.setattr(race_mod.RunSession, "compute", dying)
    with pytest.raises(KeyboardInterrupt):
        _race(path, ws)
    monkeypatch.setattr(race_mod.RunSession, "compute", original)
    partial = Store(ws.store_url).leaderboard("race")
    assert set(partial["status"]) == {"running"} and 0 < partial["n_questions"].sum() < 240
    _race(path, ws)
    clean, resumed = Store(ws_clean.store_url).leaderboard("race"), Store(ws.store_url).leaderboard("race")
    pd.testing.assert_frame_equal(_rows(ws_clean, clean["run_id"]), _rows(ws, resumed["run_id"]))
    assert list(clean["status"]) == list(resumed["status"]) and list(clean["n_questions"]) == list(resumed["n_questions"])
    assert list(clean["evidence"]) == list(resumed["evidence"])


def test_staged_pruning_eliminates_weak_retrieval_before_any_generation(tmp_path, monkeypatch):
    ws = _ws(tmp_path)
    path = _experiment(tmp_path, search="search: {strategy: race, metric: contains_gold, margin: 0.05, round: 10, min_questions: 10, "
                                        "prune_retrieval: {metric: hit_at_1, margin: 0.05}}")
    _race(path, ws)
    board = Store(ws.store_url).leaderboard("race")
    pruned = board[board["evidence"].map(lambda e: e["race"].get("stage") == "retrieval")]
    assert not pruned.empty and set(pruned["status"]) == {"eliminated"} and set(pruned["n_questions"]) == {0}
    e = pruned.iloc[0]["evidence"]["race"]
    assert e["reason"] == "retrieval" and e["constraint"] == "hit_at_1" and e["upper"] < -0.05 and e["n_questions"] == 120
    plan = plan_experiment(load_experiment(path), ws)
    twin = retrieval_twin(plan.run(pruned.iloc[0]["run_id"]))
    assert len(Store(ws.store_url).questions(twin.run_id)) == 120  # retrieval ran on every question, no answer
    assert Store(ws.store_url).questions(twin.run_id)["answer"].isna().all()
    lines = [line for line in _board_lines(ws, monkeypatch) if line.split()[:1] == ["out"]]
    assert sum("out at retrieval" in line for line in lines) == len(pruned)


def test_a_retrieval_twin_has_the_id_of_the_same_retrieval_only_grid_point(tmp_path):
    ws = _ws(tmp_path)
    with_gen = plan_experiment(load_experiment(_experiment(tmp_path, search="")), ws)
    text = _experiment(tmp_path, search="", name="ret").read_text().replace(f"  generation: [{GEN}]\n", "")
    (tmp_path / "ret.yaml").write_text(text)
    without = plan_experiment(load_experiment(tmp_path / "ret.yaml"), ws)
    assert {retrieval_twin(r).run_id for r in with_gen.runs} == {r.run_id for r in without.runs}


def test_a_constraint_eliminates_what_violates_it_with_confidence(tmp_path, monkeypatch):
    ws = _ws(tmp_path)
    path = _experiment(tmp_path, search="search: {strategy: race, metric: contains_gold, margin: 0.05, round: 10, min_questions: 10, "
                                        "constraints: {retrieval_latency_p95_s: {max: 0.000001}}}")
    _race(path, ws)
    board = Store(ws.store_url).leaderboard("race")
    reasons = {e["race"].get("reason") for e in board["evidence"]}
    assert set(board["status"]) == {"eliminated"} and reasons == {"constraint"}
    e = board.iloc[0]["evidence"]["race"]
    assert e["constraint"] == "retrieval_latency_p95_s" and e["mean"] == 1.0 and e["e_value"] >= 1 / (0.05 / 2 / 4)
    lines = [line for line in _board_lines(ws, monkeypatch) if line.split()[:1] == ["out"]]
    assert len(lines) == 4 and all(f"out over limit, {e['n_questions']} q" in line for line in lines)


def test_plan_prints_builds_calls_tokens_cost_and_time(tmp_path):
    ws = _ws(tmp_path)
    path = _experiment(tmp_path)
    args = ["plan", str(path), "--store", ws.store_url, "--cache-dir", str(ws.cache_dir)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    text = " ".join(first.output.split())
    for part in ("race: 4 configurations x 120 questions", "chunk set sentence 64/8 +title: to build",
                 "index sentence 64/8 +title x openai_compatible:fake-embedder: to build",
                 "texts to embed", "LLM calls: grid 480", "worst case 480", "expected unknown", "tokens (grid)", "cost: unknown",
                 "generation unknown"):
        assert part in text, part
    assert not Path(ws.store_url.removeprefix("sqlite:///")).exists() or Store(ws.store_url).experiment_names() == []
    _race(path, ws)
    again = " ".join(CliRunner().invoke(app, args).output.split())
    assert "chunk set sentence 64/8 +title: cached" in again and "index sentence 64/8 +title x openai_compatible:fake-embedder: cached" in again
    used = int(Store(ws.store_url).leaderboard("race")["n_questions"].sum())
    assert f"expected {used} (this experiment's stored race)" in again and "measured here: llm:openai_compatible:fake-llm" in again
    assert "generation unknown" not in again and "time as a race: generation" in again


@pytest.mark.parametrize("search, field, message", [
    ("{strategy: race, metric: contians_gold}", "search.metric", "unknown metric 'contians_gold' (did you mean 'contains_gold'?)"),
    ("{strategy: race, metric: generation_latency_s}", "search.metric", "a race compares per-question quality scores"),
    ("{strategy: race, metric: hit_at_3}", "search.metric", "not measured for runs that keep fewer than 3 chunks"),
    ("{strategy: race, margin: -0.1}", "search.margin", "margin must be >= 0"),
    ("{strategy: race, alpha: 1.5}", "search.alpha", "alpha must be in (0, 1)"),
    ("{strategy: race, alpha: 0}", "search.alpha", "alpha must be in (0, 1)"),
    ("{strategy: race, round: 0}", "search.round", "round must be >= 1"),
    ("{strategy: race, min_questions: 200}", "search.min_questions", "needs at least 200 questions"),
    ("{strategy: race, min_questions: 5}\nqueries: {limit: 8}", "search", "race without enough questions"),
    ("{strategy: rase}", "search.strategy", "unknown search strategy 'rase' (did you mean 'race'?)"),
    ("{margin: 0.1}", "search.margin", "margin applies to strategy 'race' only"),
    ("{strategy: race, constraints: {f1: {max: 1}}}", "search.constraints.f1", "not a latency, token or cost metric"),
])
def test_bad_search_settings_are_one_line_errors_naming_the_field(tmp_path, search, field, message):
    path = _experiment(tmp_path, search=f"search: {search}", n_queries=120)
    with pytest.raises(ConfigError) as err:
        plan_experiment(load_experiment(path), _ws(tmp_path))
    text = str(err.value)
    assert "\n" not in text and f"{path}:" in text and f": {field}: " in text and message in text, text
    assert text.startswith(f"{path}:8: ")  # the file and the line of the search: block


def test_race_replay_on_an_exhaustive_experiment(tmp_path):
    """`workbench race replay` on a grid run with the fakes: no model is called (the fake LLM is not
    even built), the numbers are those of replaying the pure race on the stored rows."""
    ws = _ws(tmp_path)
    path = _experiment(tmp_path, search="", name="grid")
    plan = plan_experiment(load_experiment(path), ws)
    from workbench.pipeline.runner import Runner

    with Runner(plan, ws, components=fake_components(plan, ws)) as runner:
        runner.run()
    args = ["race", "replay", "grid", "--store", ws.store_url, "--orders", "20", "--metric", "contains_gold", "--margin", "0.05",
            "--min-questions", "10", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["orders"] == 20 and out["n_configs"] == 4 and out["n_questions"] == 120 and out["metric"] == "contains_gold"
    assert 0.25 <= out["mean_share_of_calls"] < 1 and out["min_share_of_calls"] <= out["mean_share_of_calls"] <= out["max_share_of_calls"]
    assert out["winner_in_ties_with_best"] == 1.0 and out["near_best_eliminated"] == 0.0
    board = Store(ws.store_url).leaderboard("grid").set_index("run_id")
    assert out["best"] == board["contains_gold"].idxmax()
    text = CliRunner().invoke(app, args[:-1])
    assert "share of calls: mean" in text.output and "ties-with-best set: 100.0% of orders" in text.output
    bad = CliRunner().invoke(app, [*args[:-1], "--alpha", "2"])
    assert bad.exit_code == 2 and "alpha must be in (0, 1)" in bad.output
    raced = CliRunner().invoke(app, ["race", "replay", "nope", "--store", ws.store_url])
    assert raced.exit_code == 2 and "no experiment 'nope'" in raced.output
    from workbench.report.race import replay_orders

    search = {"strategy": "race", "metric": "contains_gold", "margin": 0.05, "alpha": 0.05, "round": 10, "min_questions": 10, "seed": 0}
    pruned = replay_orders(Store(ws.store_url), "grid", {**search, "prune_retrieval": {"metric": "chunk_hit_at_1", "margin": 0.05}}, 10)
    plain = replay_orders(Store(ws.store_url), "grid", search, 10)
    assert pruned["mean_share_of_calls"] < plain["mean_share_of_calls"]  # token-8 chunks leave before any answer
