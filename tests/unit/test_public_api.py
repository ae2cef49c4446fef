"""The public API: ``workbench.__all__`` is sorted, every name in it resolves, and importing the
package loads no model or retrieval library (names load on first use)."""

from __future__ import annotations

import subprocess
import sys

import workbench
from tests.conftest import ROOT

HEAVY = ("llama_index", "chromadb", "torch", "sentence_transformers", "transformers", "openai", "papermill")


def test_all_is_sorted_and_every_name_resolves():
    assert workbench.__all__ == sorted(workbench.__all__)
    for name in workbench.__all__:
        assert getattr(workbench, name) is not None, name
    assert set(workbench.__all__) <= set(dir(workbench))


def test_the_api_covers_a_whole_bakeoff():
    for name in ("Workspace", "load_experiment", "plan_experiment", "Runner", "open_store", "render_report", "compare_runs",
                 "evaluate_gates", "export_run", "WorkbenchError"):
        assert name in workbench.__all__


def test_an_unknown_name_is_an_attribute_error():
    try:
        workbench.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("no AttributeError")


def test_importing_the_package_loads_no_model_library():
    code = f"import sys, workbench; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
