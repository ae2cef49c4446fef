"""Notebooks rendered the scheduler's way, opened in headless Chromium.

A scheduler runs a notebook with plain ``papermill`` and publishes ``jupyter nbconvert --to html
--no-input`` of the result, with none of the workbench's own rendering. Checked in the live DOM:

* the report: no code, no duplicated headings, no table wider than the space it is shown in (so
  nothing is cut off on the right, at 1300 and at 1000 pixels), no stray text or warnings, and the
  workbench stylesheet applied (runs side by side in the drill-down);
* the explorer: its widgets cannot run without a kernel, and the page says so in words, both when
  the notebook saved its widget state (plain papermill does) and when it did not (JupyterLab's
  default), where the static leaderboard stands in for the widgets.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tests.conftest import ROOT
from tests.integration.test_report_browser import ARTIFACTS, DevTools, browser  # noqa: F401  (the fixture)
from tests.notebooks.fixture_store import build_fixture_store

pytestmark = pytest.mark.integration
NOTEBOOKS = ROOT / "workbench" / "notebooks"
EXPECTED_SECTIONS = ["Recommendation", "Leaderboard", "Reliability and safety", "Main effects", "Quality vs latency and cost",
                     "Distributions", "Per-question drill-down", "Lineage"]


def _run(cmd: list[str], cwd: Path, env: dict) -> None:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict:
    """report.ipynb and explore.ipynb executed by plain papermill, converted by plain nbconvert."""
    fx = build_fixture_store(tmp_path_factory.getbasetemp() / "nb-fixture")
    out = tmp_path_factory.mktemp("nbconvert")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKBENCH_")}
    env.update(PYTHONPATH=str(ROOT), WORKBENCH_CACHE=str(fx.cache_dir))
    papermill, jupyter = [sys.executable, "-m", "papermill"], [sys.executable, "-m", "jupyter"]
    _run([*papermill, str(NOTEBOOKS / "report.ipynb"), "report.ipynb", "-p", "store_url", fx.store_url, "-p", "experiment", fx.experiment],
         out, env)
    _run([*papermill, str(NOTEBOOKS / "explore.ipynb"), "explore.ipynb", "-p", "store_url", fx.store_url], out, env)
    # as JupyterLab saves it by default: without the widget state
    nb = nbformat.read(out / "explore.ipynb", as_version=4)
    assert "widgets" in nb.metadata  # papermill saved the widget state
    del nb.metadata["widgets"]
    nbformat.write(nb, out / "explore-nostate.ipynb")
    for name in ("report", "explore", "explore-nostate"):
        _run([*jupyter, "nbconvert", "--to", "html", "--no-input", f"{name}.ipynb"], out, env)
    return {name: out / f"{name}.html" for name in ("report", "explore", "explore-nostate")}


def _open(b: DevTools, path: Path, width: int) -> None:
    for domain in ("Page", "Runtime"):
        b.send(f"{domain}.enable")
    b.send("Emulation.setDeviceMetricsOverride", width=width, height=1000, deviceScaleFactor=1, mobile=False)
    b.send("Page.navigate", url=path.resolve().as_uri())
    b.wait_for("Page.loadEventFired", timeout=120)  # the CDN scripts nbconvert's template names fail offline
    b.eval("new Promise(r => setTimeout(r, 500))")


# Tables wider than their scroll container (or the page): what a reader would find cut off on the right.
CUT_OFF = """Array.from(document.querySelectorAll('table')).filter(t => {
  const box = t.closest('.scroll') || t.closest('.jp-OutputArea-output') || document.body;
  return t.getBoundingClientRect().right > box.getBoundingClientRect().right + 1 || box.scrollWidth > box.clientWidth + 1;
}).map(t => t.className + ': ' + t.querySelector('tr').textContent.slice(0, 60))"""


@pytest.mark.parametrize("width", [1300, 1000])
def test_report_renders_cleanly_through_plain_nbconvert(rendered, browser, width):  # noqa: F811
    b = browser
    _open(b, rendered["report"], width)
    assert b.eval("document.querySelectorAll('.jp-InputArea, .jp-InputPrompt:not(:empty)').length") == 0  # no code
    text = b.eval("document.body.innerText")
    assert "load_report" not in text and "import " not in text and "application/vnd.workbench" not in text
    headings = b.eval("Array.from(document.querySelectorAll('h1, h2')).map(h => h.textContent.replace('¶', '').trim())")
    assert headings == ["Bake-off report: nb_fixture", *EXPECTED_SECTIONS]  # each once, none from markdown cells
    assert b.eval("document.querySelectorAll('[data-mime-type=\"application/vnd.jupyter.stderr\"], .jp-OutputArea-output pre').length") == 0
    assert b.eval(CUT_OFF) == []
    assert b.eval("document.documentElement.scrollWidth") <= width
    assert b.eval("document.querySelectorAll('table.leaderboard tbody tr').length") == 4
    assert b.eval("document.querySelectorAll('details.all-metrics table tbody tr').length") >= 10  # every metric, collapsed
    # the workbench stylesheet is there: badges, intervals under values, runs side by side
    assert b.eval("getComputedStyle(document.querySelector('.wb .side')).display") == "grid"
    assert b.eval("getComputedStyle(document.querySelector('table.leaderboard .ci')).display") == "block"
    b.eval("document.querySelectorAll('details').forEach(d => d.open = true)")
    sides = b.eval("Array.from(document.querySelectorAll('details.question .side')).slice(0, 3).map(s => "
                   "Array.from(s.children).map(c => Math.round(c.getBoundingClientRect().top)))")
    assert sides and all(len(tops) == 2 and tops[0] == tops[1] for tops in sides), sides  # side by side, not stacked
    assert b.eval(CUT_OFF) == []
    if width == 1300:
        height = int(b.eval("document.documentElement.scrollHeight"))
        b.send("Emulation.setDeviceMetricsOverride", width=width, height=min(height, 16000), deviceScaleFactor=1, mobile=False)
        shot = b.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "report-nbconvert.png").write_bytes(base64.b64decode(shot["data"]))


def test_exported_explorer_says_its_widgets_need_a_kernel(rendered, browser):  # noqa: F811
    b = browser
    _open(b, rendered["explore"], 1300)  # widget state saved: nbconvert would need the widget library from a CDN
    text = " ".join(b.eval("document.body.innerText").split())
    assert "The widgets need a running Python kernel." in text
    assert "cannot run them" in text

    _open(b, rendered["explore-nostate"], 1300)  # JupyterLab's save: the static stand-in is shown instead
    text = " ".join(b.eval("document.body.innerText").split())
    assert "its widgets need a running Python kernel" in text and "nb_fixture: leaderboard" in text
    assert b.eval("document.querySelectorAll('.wb table tbody tr').length") == 4  # the runs
    assert "Live queries need a running Python kernel" in text
    assert "VBox(" not in text and "Dropdown(" not in text  # no widget reprs
    assert json.loads(json.dumps(b.eval("document.querySelectorAll('script[src*=\"html-manager\"]').length"))) == 0
