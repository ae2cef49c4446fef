"""The explorer as a user drives it: real ipywidgets events (``.value`` set on the pickers, as a click
in JupyterLab does) on a store holding several experiments.

The store is a copy of the notebook fixture (``nb_fixture``: 4 retrieval runs over 10 questions)
plus a second experiment run for real (``nb_second``: 2 BM25 runs over 6 questions, so its run ids
differ) and a third that was saved but has no runs yet (a run stopped before its first question),
which is what an error looks like to the explorer.
"""

from __future__ import annotations

import sqlite3

import pytest

from tests.notebooks.fixture_store import EXPERIMENT, build_fixture_store
from workbench.explore import Explorer

pytestmark = pytest.mark.integration

SECOND = "nb_second"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from workbench.config.experiment import load_experiment
    from workbench.pipeline.plan import plan_experiment
    from workbench.pipeline.runner import run_experiment
    from workbench.settings import Workspace
    from workbench.store import Store

    fx = build_fixture_store(tmp_path_factory.getbasetemp() / "nb-fixture")
    root = tmp_path_factory.mktemp("explorer")
    src, dst = sqlite3.connect(fx.store_url.removeprefix("sqlite:///")), sqlite3.connect(root / "wb.sqlite")
    with dst:
        src.backup(dst)
    src.close()
    dst.close()
    url = f"sqlite:///{root / 'wb.sqlite'}"
    exp = root / f"{SECOND}.yaml"
    exp.write_text(f"""name: {SECOND}
dataset: {fx.dataset}
queries: {{limit: 6, seed: 1}}
grid:
  chunking: [{{splitter: none}}, {{splitter: sentence, chunk_size: 64, chunk_overlap: 8}}]
  embedding: [{{provider: local, model: all-MiniLM-L6-v2}}]
  retrieval: [{{method: bm25, top_k: 3}}]
""", encoding="utf-8")
    ws = Workspace.resolve(store=url, cache_dir=fx.cache_dir)
    run_experiment(plan_experiment(load_experiment(exp), ws), ws)
    Store(url).save_experiment("nb_empty", {"name": "nb_empty"}, "0" * 64, str(exp), [])
    return {"url": url, "cache": str(fx.cache_dir)}


def widgets_search(explorer):
    return explorer.widget().children[4]


def _options(dropdown) -> list[str]:
    return [value for _, value in dropdown.options]


def _state(explorer, widgets):
    _, exp, runs, _, _, status, listing, detail = widgets.children
    run_a, run_b = runs.children
    return exp, run_a, run_b, status, listing, detail


def test_switching_experiments_refills_both_runs_and_the_list_together(store):
    from workbench.store import Store

    st = Store(store["url"])
    first_runs, second_runs = set(st.run_ids(EXPERIMENT)), set(st.run_ids(SECOND))
    assert not first_runs & second_runs
    explorer = Explorer(store["url"], cache_dir=store["cache"])  # no experiment named: the store holds three
    exp, run_a, run_b, status, listing, detail = _state(explorer, explorer.widget())
    assert set(exp.options) == {EXPERIMENT, SECOND, "nb_empty"}
    assert exp.value == SECOND  # the one with runs stored last (nb_empty has none)

    for name, runs, n_questions in ((EXPERIMENT, first_runs, 10), (SECOND, second_runs, 6), (EXPERIMENT, first_runs, 10)):
        exp.value = name
        assert "Error" not in status.value, status.value
        assert set(_options(run_a)) == runs and set(_options(run_b)) == runs | {""}
        assert run_a.value in runs and run_b.value in runs and run_a.value != run_b.value
        assert (explorer.experiment, explorer.run_a, explorer.run_b) == (name, run_a.value, run_b.value)
        assert len(listing.options) == n_questions and f"{n_questions} questions" in status.value
        assert listing.value == listing.options[0][1] and listing.value in set(st.question_values(run_a.value)["query_id"])
        # run A and run B side by side, each with collapsible passages
        assert detail.value.count('class="side"') == 1 and "A: #1" in detail.value and "B: #2" in detail.value
        assert "<details class=\"passage" in detail.value

    # filtering the list shows the first question that matches, not the one shown before
    shown = detail.value
    words = st.question_values(run_a.value)["question"].iloc[-1].split()
    search = widgets_search(explorer)
    search.value = " ".join(words[:3])
    assert listing.options and detail.value != shown and listing.value in detail.value
    search.value = ""

    # picking run B by hand, then switching experiments: nothing from the old experiment survives
    run_b.value = sorted(first_runs - {run_a.value, run_b.value})[0]
    assert explorer.run_b == run_b.value
    exp.value = SECOND
    assert explorer.run_a in second_runs and explorer.run_b in second_runs and run_b.value in second_runs


def test_errors_show_in_the_widget_and_leave_the_state_as_it_was(store):
    explorer = Explorer(store["url"], EXPERIMENT, cache_dir=store["cache"])
    exp, run_a, run_b, status, listing, detail = _state(explorer, explorer.widget())
    before = (run_a.value, run_b.value, listing.options)
    exp.value = "nb_empty"  # stored, but no run yet
    assert "Error:</b> experiment &#x27;nb_empty&#x27; has no runs yet" in status.value, status.value
    assert exp.value == EXPERIMENT and explorer.experiment == EXPERIMENT
    assert (run_a.value, run_b.value, listing.options) == before

    box, config, button, result = explorer.try_query_widget().children
    box.value = "   "
    button.click()
    assert "Error:</b> type a question first" in result.value
    exp.value = SECOND  # the live-query box offers the new experiment's runs
    assert set(_options(config)) == set(explorer.board["run_id"]) and config.value == explorer.run_a


def test_a_live_query_is_not_called_unanswerable(store):
    explorer = Explorer(store["url"], EXPERIMENT, cache_dir=store["cache"])
    box, config, button, result = explorer.try_query_widget().children
    config.value = next(r for r in explorer.board["run_id"] if "bm25" in str(explorer.board.set_index("run_id").loc[r, "retrieval"]))
    box.value = "Who led the Panthers in sacks?"
    button.click()
    assert "Who led the Panthers in sacks?" in result.value and "score" in result.value
    assert "unanswerable" not in result.value and "a new question, so no gold answer" in result.value


def test_the_explorer_displays_with_a_static_stand_in(store):
    explorer = Explorer(store["url"], SECOND, cache_dir=store["cache"])
    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    html = bundle["text/html"]
    assert "need a running Python kernel" in html and f"{SECOND}: leaderboard" in html
    assert html.count("<tr>") == 1 + 2  # header and the two runs


def test_an_empty_store_shows_a_message_not_an_error(tmp_path):
    explorer = Explorer(f"sqlite:///{tmp_path / 'empty.sqlite'}")
    box = explorer.widget()
    status = box.children[5]
    assert explorer.experiment is None and "holds no experiments with runs yet" in status.value
