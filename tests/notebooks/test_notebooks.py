"""The three notebooks, executed for real: papermill with parameters, `workbench run`/`report`
through them, the parameter checks, a failing cell, the HTML rendering, and nbval over notebooks/.

Everything runs against a small store built once per session by the real runner (see
fixture_store.py), offline; kernels talk to the test over loopback only.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import papermill
import pytest

from tests.htmltags import start_tags
from tests.notebooks.fixture_store import XSS_DOC, XSS_QUESTION, FixtureStore, build_fixture_store
from workbench.errors import NotebookError
from workbench.notebooks import NOTEBOOKS, SORT_SCRIPT, execute_notebook, notebook_path, recorded, render_html, validate_parameters

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = ROOT / "workbench" / "notebooks"


@pytest.fixture(scope="session")
def fixture_store(tmp_path_factory) -> FixtureStore:
    return build_fixture_store(tmp_path_factory.getbasetemp() / "nb-fixture")


def _copy_store(fx: FixtureStore, dest: Path) -> str:
    """A private copy of the fixture store (notebooks that write must not change the shared one)."""
    src = sqlite3.connect(fx.store_url.removeprefix("sqlite:///"))
    dst = sqlite3.connect(dest)
    with dst:
        src.backup(dst)
    src.close()
    dst.close()
    return f"sqlite:///{dest}"


def assert_inert_page(page: str) -> None:
    """Parsed as a browser would: one inline script (the sorter), images only as data: PNGs, no on* handler."""
    tags = start_tags(page)
    scripts = [a for t, a in tags if t == "script"]
    assert scripts == [[]]
    for tag, attrs in tags:
        assert tag not in ("svg", "iframe", "object", "embed"), tag
        assert not any(name.lower().startswith("on") for name, _ in attrs), (tag, attrs)
        if tag == "img":
            assert dict(attrs)["src"].startswith("data:image/png;base64,")


def assert_offline_page(page: str) -> None:
    """No external script, stylesheet, image or frame: everything is inline or a data: URI."""
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I), "external script"
    assert not re.search(r"<link\b", page, re.I), "linked resource"
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", page, re.I) and "@import" not in page
    tags = start_tags(page)
    for tag, attrs in tags:
        for name, value in attrs:
            if name in ("src", "href", "action", "poster", "data", "srcset", "background", "formaction"):
                assert not re.match(r"\s*(https?:)?//", value or "", re.I), f"<{tag} {name}={value[:60]}>"
                if name == "src":
                    assert (value or "").startswith("data:image/png;base64,"), f"<{tag} src={value[:60]}>"
    assert "Content-Security-Policy" in page and "default-src 'none'" in page


# -- no kernel needed ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_parameter_is_visible_to_papermill(name):
    """papermill's parser skips a line with a second '=' (e.g. in its comment): that parameter would
    then be 'unknown'. Every assignment in the parameters cell must be inspectable."""
    nb = nbformat.read(notebook_path(name), as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assigned = {t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets}
    assert assigned and set(papermill.inspect_notebook(str(notebook_path(name)))) == assigned


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_are_saved_without_outputs(name):
    nb = nbformat.read(notebook_path(name), as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_unknown_parameter_is_an_error_with_a_suggestion():
    with pytest.raises(NotebookError) as err:
        validate_parameters(notebook_path("report"), {"experimnt": "x"})
    message = str(err.value)
    assert "\n" not in message
    assert "report.ipynb: unknown parameter 'experimnt' (did you mean 'experiment'?)" in message


@pytest.mark.parametrize(("name", "params", "expected"), [
    ("report", {"drilldown_limit": "10"}, "parameter 'drilldown_limit' expects int (default 15), got str '10'"),
    ("bakeoff", {"query_limit": True}, "parameter 'query_limit' expects int"),
    ("bakeoff", {"axes": ["retrieval"]}, "parameter 'axes' expects dict"),
    ("explore", {"query": 3}, "parameter 'query' expects str"),
])
def test_wrong_parameter_type_is_an_error(name, params, expected):
    with pytest.raises(NotebookError, match=re.escape(expected)):
        validate_parameters(notebook_path(name), params)


def test_valid_parameters_pass():
    validate_parameters(notebook_path("bakeoff"), {"axes": {"retrieval": ["bm25", 0]}, "query_limit": 3, "store_url": "sqlite://"})


def test_render_html_keeps_rich_outputs_only(tmp_path):
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

    nb = new_notebook(cells=[
        new_markdown_cell("# notebook-only text $x$"),
        new_code_cell("SECRET_SOURCE = 1", outputs=[
            new_output("stream", name="stderr", text="a warning"),
            new_output("display_data", data={"text/html": '<table class="sortable"><tr><td>cell</td></tr></table>', "text/plain": "t"}),
            new_output("display_data", data={"image/png": "iVBORw0KGgo=\n", "text/plain": "<Figure>"}),
            new_output("execute_result", data={"text/plain": "<b>plain & text</b>"}, execution_count=1)])])
    nbformat.write(nb, tmp_path / "n.ipynb")
    page = render_html(tmp_path / "n.ipynb", tmp_path / "n.html", "title <b>").read_text(encoding="utf-8")
    assert_offline_page(page)
    assert "SECRET_SOURCE" not in page and "a warning" not in page and "notebook-only" not in page and "In&nbsp;[" not in page
    assert '<td>cell</td>' in page and 'src="data:image/png;base64,iVBORw0KGgo="' in page and "&lt;b&gt;plain &amp; text" in page
    assert "<title>title &lt;b&gt;</title>" in page
    # the one inline script is allowed by its hash, nothing else is
    digest = base64.b64encode(hashlib.sha256(SORT_SCRIPT.encode()).digest()).decode()
    assert f"<script>{SORT_SCRIPT}</script>" in page and f"script-src 'sha256-{digest}'" in page


# -- executed notebooks (real kernel, real store) ------------------------------------------------

@pytest.mark.integration
def test_workbench_run_executes_the_bakeoff_notebook_and_renders_the_report(fixture_store, tmp_path):
    fx = fixture_store
    reports = tmp_path / "reports"
    env = fx.env(WORKBENCH_STORE=f"sqlite:///{tmp_path / 'run.sqlite'}", WORKBENCH_REPORTS=str(reports))
    cmd = [sys.executable, "-m", "workbench", "run", str(fx.experiment_path), "--axis", "retrieval=bm25"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "nb_fixture: 2 runs x 10 questions" in result.stderr
    assert "10/10 questions computed" in result.stderr  # the notebook's progress, streamed
    assert "nb_fixture: 2 runs" in result.stdout and "nDCG@10 [95% CI]" in result.stdout  # the leaderboard, one line per run
    assert "    runs: 2/2 runs done (100%" in result.stderr  # progress as plain lines: the output is not a terminal
    assert "workbench-progress:" not in result.stderr + result.stdout
    report_line = [line for line in result.stdout.splitlines() if line.startswith("report: ")]
    assert len(report_line) == 1
    html_path = Path(report_line[0].removeprefix("report: "))
    folder = html_path.parent
    assert folder.parent == reports / "nb_fixture"
    assert {p.name for p in folder.iterdir()} >= {"bakeoff.ipynb", "report.ipynb", "report.html", "summary.json"}

    bakeoff = nbformat.read(folder / "bakeoff.ipynb", as_version=4)
    summary = recorded(bakeoff)[-1]
    assert summary["n_runs"] == 2 and summary["n_questions"] == 10
    assert any("text/html" in o.get("data", {}) for c in bakeoff.cells for o in c.get("outputs", []))  # the leaderboard frame

    page = html_path.read_text(encoding="utf-8")
    assert_offline_page(page)
    for section in ("Recommendation", "Leaderboard", "Main effects", "Quality vs latency and cost", "Distributions",
                    "Per-question drill-down", "Lineage", "Package versions"):
        assert f"<h2>{section}</h2>" in page or f"<h3>{section}</h3>" in page, section
    assert page.count('src="data:image/png;base64,') == 3
    assert "load_report" not in page and "import " not in page  # no code cells
    # untrusted text is escaped, never markup
    assert XSS_QUESTION.strip().replace("<", "&lt;").replace(">", "&gt;").replace("'", "&#x27;") in page
    assert "&lt;script&gt;alert(&quot;xss-doc&quot;)&lt;/script&gt;" in page
    assert XSS_DOC.strip() not in page and "<img src=x" not in page
    assert_inert_page(page)

    index = (reports / "index.html").read_text(encoding="utf-8")
    assert_offline_page(index)
    assert f'href="nb_fixture/{folder.name}/report.html"' in index and "bakeoff.ipynb" in index

    # re-render with an explicit baseline: a new folder, listed first in the index
    from workbench.store import Store

    board = Store(env["WORKBENCH_STORE"]).leaderboard("nb_fixture")
    worst = board.sort_values("ndcg_at_10").iloc[0]["run_id"]
    t0 = time.perf_counter()
    again = subprocess.run([sys.executable, "-m", "workbench", "report", "nb_fixture", "--baseline", worst[:8]], env=env,
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    elapsed = time.perf_counter() - t0
    assert again.returncode == 0, again.stderr
    second = Path(again.stdout.strip().removeprefix("report: "))
    assert second.parent != folder and second.exists()
    assert "given as baseline_run" in second.read_text(encoding="utf-8")
    assert elapsed < 60, f"re-rendering took {elapsed:.1f}s"
    index = (reports / "index.html").read_text(encoding="utf-8")
    assert index.index(second.parent.name) < index.index(folder.name)  # newest first


@pytest.mark.integration
def test_bakeoff_notebook_with_parameters(fixture_store, tmp_path):
    fx = fixture_store
    store_url = f"sqlite:///{tmp_path / 'bk.sqlite'}"
    nb = execute_notebook("bakeoff", tmp_path / "bakeoff.ipynb", {
        "experiment_path": str(fx.experiment_path), "store_url": store_url, "cache_dir": str(fx.cache_dir),
        "query_limit": 4, "axes": {"chunking": [0]}})
    summary = recorded(nb)[-1]
    assert summary["n_runs"] == 2 and summary["n_questions"] == 4  # whole documents x (bm25, dense)
    from workbench.store import Store

    board = Store(store_url).leaderboard("nb_fixture")
    assert set(board["chunking"]) == {"whole documents +title"} and set(board["status"]) == {"complete"}
    # progress in a notebook: tqdm.auto bars (ipywidgets), one per task, each finished
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"].values()
    bars = [m["state"] for m in state if m["model_name"] == "FloatProgressModel"]
    texts = [m["state"].get("value", "") for m in state if m["model_name"] == "HTMLModel"]
    assert {b["max"] for b in bars} >= {2, 4}  # the grid's 2 runs, each run's 4 questions
    assert all(b["value"] == b["max"] for b in bars)
    assert any("4/4" in t and "questions" in t for t in texts) and any("2/2" in t and "runs" in t for t in texts)


def test_unknown_axis_value_fails_the_command_in_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tests.notebooks.fixture_store import write_experiment
    from workbench.cli import app

    (tmp_path / "data").mkdir()
    exp = write_experiment(tmp_path / "exp.yaml", tmp_path / "data")
    monkeypatch.setenv("WORKBENCH_STORE", f"sqlite:///{tmp_path / 'x.sqlite'}")
    monkeypatch.setenv("WORKBENCH_REPORTS", str(tmp_path / "reports"))
    result = CliRunner().invoke(app, ["run", str(exp), "--axis", "retrieval=bm42"])
    assert result.exit_code == 2
    assert "axis 'retrieval': 'bm42' matches no entry; entries: 0: bm25@5; 1: dense@5" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "reports").exists() and not (tmp_path / "x.sqlite").exists()


@pytest.mark.integration
def test_a_failing_bakeoff_cell_fails_workbench_run_with_the_partial_notebook(fixture_store, tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    nb = nbformat.read(NOTEBOOK_DIR / "bakeoff.ipynb", as_version=4)
    plan_cell = next(c for c in nb.cells if c.cell_type == "code" and "bakeoff.prepare(" in c.source)
    plan_cell.source = 'raise RuntimeError("disk full while storing <rows>")'
    nbformat.write(nb, notebooks / "bakeoff.ipynb")
    env = fixture_store.env(WORKBENCH_STORE=f"sqlite:///{tmp_path / 'x.sqlite'}", WORKBENCH_REPORTS=str(tmp_path / "reports"),
                            WORKBENCH_NOTEBOOKS=str(notebooks))
    result = subprocess.run([sys.executable, "-m", "workbench", "run", str(fixture_store.experiment_path), "--axis", "retrieval=bm25"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    match = re.search(r"error: bakeoff\.ipynb failed in cell \d+: RuntimeError: disk full while storing <rows> "
                      r"\(partially executed notebook: (.+)\)$", last)
    assert match, result.stderr
    partial = Path(match.group(1))
    assert partial.parent.parent == tmp_path / "reports" / "nb_fixture" and partial.name == "bakeoff.ipynb"
    errors = [o for c in nbformat.read(partial, as_version=4).cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors and errors[0]["ename"] == "RuntimeError"
    assert "report:" not in result.stdout


@pytest.mark.integration
def test_failed_cell_names_the_error_and_the_partial_notebook(fixture_store, tmp_path):
    out = tmp_path / "partial" / "report.ipynb"
    with pytest.raises(NotebookError) as err:
        execute_notebook("report", out, {"experiment": "no_such_experiment", "store_url": fixture_store.store_url})
    message = str(err.value)
    assert "\n" not in message
    assert "report.ipynb failed in cell" in message and "StoreError: no experiment 'no_such_experiment'" in message
    assert f"partially executed notebook: {out}" in message
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors and errors[0]["ename"] == "StoreError"


@pytest.mark.integration
def test_explore_notebook_browses_and_runs_a_live_query(fixture_store, tmp_path):
    from workbench.store import Store

    fx = fixture_store
    bm25 = Store(fx.store_url).leaderboard(fx.experiment)
    bm25_run = bm25[(bm25["retrieval"] == "bm25@5") & (bm25["chunking"] == "whole documents +title")].iloc[0]["run_id"]
    nb = execute_notebook("explore", tmp_path / "explore.ipynb", {
        "store_url": fx.store_url, "cache_dir": str(fx.cache_dir), "experiment": fx.experiment, "run_a": bm25_run[:8],
        "query": "How many points did the Panthers defense surrender?"})
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(widgets) == 2  # the explorer and the try-a-query box, each with a static stand-in for HTML exports
    assert all("need a running Python kernel" in o["data"]["text/html"] for o in widgets)
    live = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {}) and o not in widgets]
    assert len(live) == 1 and "retrieval" in live[0] and "xq-00-00" in live[0] and "score" in live[0]
    assert "How many points did the Panthers defense surrender?" in live[0]


@pytest.mark.integration
def test_nbval_runs_every_notebook(fixture_store, tmp_path):
    """`pytest --nbval-lax notebooks/`, with the notebooks' default parameters pointed at a copy of
    the fixture store through the environment (as a user's shell would)."""
    fx = fixture_store
    env = fx.env(WORKBENCH_STORE=_copy_store(fx, tmp_path / "nbval.sqlite"), WORKBENCH_REPORTS=str(tmp_path / "reports"))
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "--nbval-cell-timeout=600", "-p", "no:cacheprovider",
           "-q", "-o", "addopts=", str(NOTEBOOK_DIR)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    counts = re.search(r"(\d+) passed", result.stdout)
    n_code_cells = sum(1 for p in NOTEBOOK_DIR.glob("*.ipynb") for c in nbformat.read(p, as_version=4).cells if c.cell_type == "code")
    assert counts and int(counts.group(1)) == n_code_cells, result.stdout[-2000:]
    assert {p.name for p in NOTEBOOK_DIR.glob("*.ipynb")} == {f"{n}.ipynb" for n in NOTEBOOKS}


@pytest.mark.integration
def test_explorer_widgets_filter_compare_and_try_a_query(fixture_store):
    from workbench.explore import Explorer

    fx = fixture_store
    explorer = Explorer(fx.store_url, fx.experiment, cache_dir=str(fx.cache_dir))
    try:
        _, exp, runs, outcome, search, status, listing, detail = explorer.widget().children
        run_a, run_b = runs.children
        assert exp.value == fx.experiment and run_a.value == explorer.board.iloc[0]["run_id"]
        assert len(listing.options) == 10 and "10 questions" in status.value
        assert "<details" in detail.value and "score" in detail.value  # the first question, chunks with scores
        search.value = "img src"  # the planted question, found by its (escaped) text
        assert len(listing.options) == 1
        listing.value = listing.options[0][1]
        assert "&lt;img src=x onerror=" in detail.value and "<img src=x" not in detail.value
        assert "<mark>308</mark>" in detail.value  # the gold answer, highlighted in the retrieved chunk
        search.value = ""
        run_b.value = ""  # one run only: nothing to compare
        assert explorer.run_b is None and len(listing.options) == 10
        outcome.value = "win"
        assert listing.options == ()
        box, config, button, result = explorer.try_query_widget().children
        config.value = next(r for r in explorer.board["run_id"] if "bm25" in explorer.board.set_index("run_id").loc[r, "retrieval"])
        box.value = "Who led the Panthers in sacks?"
        button.click()
        assert "Who led the Panthers in sacks?" in result.value and "xq-00-00" in result.value and "inputs changed" not in result.value
        box.value = "  "
        button.click()
        assert "type a question first" in result.value
    finally:
        explorer.close()
