"""`workbench run`'s progress as users see it, with the real runner in the notebook kernel: rich bars
in a terminal (a pseudo-terminal), plain periodic lines in a log file (``--log-file``, as cron and CI
run it). Either way the kernel's structured progress events never show as such."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT, write_xquad_slice
from tests.unit.test_cli_board import _in_terminal

pytestmark = pytest.mark.integration
EVENT = "workbench-progress:"


def _experiment(tmp_path):
    data = write_xquad_slice(tmp_path / "data", n_docs=20, n_queries=4)
    path = tmp_path / "progress.yaml"
    path.write_text(f"""name: progress_cli
dataset: {data}
grid:
  chunking: [{{splitter: sentence, chunk_size: 64, chunk_overlap: 8}}]
  embedding: [{{provider: local, model: all-MiniLM-L6-v2}}]
  retrieval: [{{method: bm25, top_k: 3}}, {{method: dense, top_k: 3}}]
""", encoding="utf-8")
    return path


def _env(tmp_path, name: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKBENCH_") and k not in ("COLUMNS", "LINES")}
    env.update(PYTHONPATH=str(ROOT), WORKBENCH_STORE=f"sqlite:///{tmp_path / name}.sqlite", WORKBENCH_CACHE=str(tmp_path / f"cache-{name}"),
               WORKBENCH_REPORTS=str(tmp_path / "reports"))
    return env


def test_log_file_gets_plain_progress_lines(tmp_path):
    exp = _experiment(tmp_path)
    log = tmp_path / "logs" / "nightly.log"
    result = subprocess.run([sys.executable, "-m", "workbench", "run", str(exp), "--no-report", "--log-file", str(log)],
                            env=_env(tmp_path, "log"), capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, log.read_text(encoding="utf-8")[-3000:]
    text = log.read_text(encoding="utf-8")
    assert EVENT not in text
    assert re.search(r"^    index all-MiniLM-L6-v2: (\d+)/\1 chunks embedded \(100%", text, re.M), text[-3000:]
    assert re.search(r"^    runs: 2/2 runs done \(100%", text, re.M)
    assert len(re.findall(r"^    [0-9a-f]{10}: 4/4 questions computed \(100%", text, re.M)) == 2
    assert "━" not in text and "\x1b[" not in text  # no bars, no terminal control codes in a log


def test_terminal_gets_progress_bars(tmp_path):
    exp = _experiment(tmp_path)
    env = _env(tmp_path, "tty")
    store = {"url": env["WORKBENCH_STORE"], "root": tmp_path}
    text = _in_terminal(store, 100, "run", str(exp), "--no-report", WORKBENCH_CACHE=env["WORKBENCH_CACHE"],
                        WORKBENCH_REPORTS=env["WORKBENCH_REPORTS"])
    assert EVENT not in text
    assert "━" in text  # rich's bars
    assert re.search(r"runs\s.*━.*\d/2 runs", text), text[-3000:]
    assert re.search(r"index all-MiniLM-L6-v2: (\d+)/\1 chunks embedded", text)
    assert re.search(r"[0-9a-f]{10}: 4/4 questions computed", text)
    assert "progress_cli: 2 runs" in text and "Hit@3" in text  # then the leaderboard (top_k 3: the hit rate is Hit@3)
