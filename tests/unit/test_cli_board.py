"""The terminal as users meet it: `workbench results`, `compare` and `export` run as commands
(subprocesses) on a store built by the real runner with the seeded fakes, named like the quickstart:
2 chunkings x 3 retrievers (dense, BM25, hybrid) x 1 LLM = 6 runs.

Widths are checked in characters, with ``$COLUMNS`` and with a real terminal (a pseudo-terminal
whose window size is set, and no ``$COLUMNS``), as ``make quickstart`` ends.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, write_xquad_slice
from workbench.testing import FAKE_BASE_URL

PROMPT = ROOT / "experiments" / "prompts" / "grounded_qa.yaml"
RANK_LINE = re.compile(r"^\s*(\d+)(=?) ([0-9a-f]{8}) ")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    from workbench.config import load_experiment
    from workbench.pipeline.plan import plan_experiment
    from workbench.pipeline.runner import Runner
    from workbench.settings import Workspace
    from workbench.testing import fake_components

    root = tmp_path_factory.mktemp("board")
    data = write_xquad_slice(root / "data", n_docs=8, n_queries=16)
    path = root / "quickstart.yaml"
    path.write_text(f"""name: quickstart
dataset: {data}
grid:
  chunking: [{{splitter: sentence, chunk_size: 64, chunk_overlap: 8}}, {{splitter: sentence, chunk_size: 128, chunk_overlap: 16}}]
  embedding: [{{provider: openai_compatible, model: fake-embedder, base_url: '{FAKE_BASE_URL}'}}]
  retrieval: [{{method: dense, top_k: 5}}, {{method: bm25, top_k: 5}}, {{method: hybrid, top_k: 5}}]
  generation: [{{provider: openai_compatible, model: fake-llm, base_url: '{FAKE_BASE_URL}', prompt: {PROMPT}, max_tokens: 32}}]
""", encoding="utf-8")
    ws = Workspace.resolve(store=f"sqlite:///{root / 'wb.sqlite'}", cache_dir=root / "cache", threads=1, root=root)
    plan = plan_experiment(load_experiment(path), ws)
    with Runner(plan, ws, components=fake_components(plan, ws)) as runner:
        runner.run()
    return {"url": ws.store_url, "root": root, "run_ids": [r.run_id for r in plan.runs]}


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(PYTHONPATH=str(ROOT), **extra)
    return env


def _cli(store: dict, *args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench", *args, "--store", store["url"]], capture_output=True, text=True,
                          env=_env(**env), timeout=300, cwd=store["root"])


def _in_terminal(store: dict, columns: int, *args: str, **env: str) -> str:
    """Run the command in a pseudo-terminal of ``columns`` x 50 (no $COLUMNS): what a user's terminal shows."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "workbench", *args, "--store", store["url"]], stdin=follower, stdout=follower,
                            stderr=follower, env=_env(TERM="xterm-256color", **env), cwd=store["root"], close_fds=True)
    os.close(follower)
    chunks, deadline = [], time.time() + 300
    while time.time() < deadline:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    text = b"".join(chunks).decode("utf-8")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r\n", "\n")  # colours and styles off: what is read


def _run_lines(text: str) -> list[re.Match]:
    return [m for m in map(RANK_LINE.match, text.splitlines()) if m]


def test_results_one_line_per_run_within_100_columns(store):
    result = _cli(store, "results", "quickstart", COLUMNS="100")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100, "\n".join(lines)
    runs = _run_lines(result.stdout)
    assert [int(m.group(1)) for m in runs] == [1, 2, 3, 4, 5, 6]
    assert sorted(m.group(3) for m in runs) == sorted(r[:8] for r in store["run_ids"])  # each run once, on its own line
    header = next(line for line in lines if "configuration" in line)
    assert "Answer F1 [95% CI]" in header
    for m, line in zip(runs, [line for line in lines if RANK_LINE.match(line)]):
        assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", line), line  # the ranking metric with its CI
    assert "--all for every metric" in result.stdout and "Holm-corrected" in result.stdout
    assert len(lines) < 20  # not the 29-column table of old


def test_results_rank_order_and_tie_markers_agree_with_json(store):
    text = _cli(store, "results", "quickstart", COLUMNS="100").stdout
    board = json.loads(_cli(store, "results", "quickstart", "--json").stdout)
    assert [r["rank"] for r in board] == list(range(1, 7))
    f1 = [r["f1"] for r in board]
    assert f1 == sorted(f1, reverse=True)  # rank order: best answer F1 first
    assert [r["run_id"][:8] for r in board] == [m.group(3) for m in _run_lines(text)]
    assert [r["ties_best"] for r in board][0] is None and all(isinstance(r["ties_best"], bool) for r in board[1:])
    assert [m.group(2) == "=" for m in _run_lines(text)][1:] == [r["ties_best"] for r in board[1:]]
    assert all({"f1_ci_low", "f1_ci_high", "hit_at_5", "label", "chunking", "retrieval"} <= set(r) for r in board)


def test_results_rank_by_another_metric(store):
    board = json.loads(_cli(store, "results", "quickstart", "--json", "--metric", "mrr").stdout)
    assert [r["mrr"] for r in board] == sorted((r["mrr"] for r in board), reverse=True)
    text = _cli(store, "results", "quickstart", "--metric", "mrr", COLUMNS="100").stdout
    assert "ranked by MRR (higher is better)" in " ".join(text.split())
    bad = _cli(store, "results", "quickstart", "--metric", "halucination")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: unknown metric 'halucination' (did you mean 'hallucination'?); metrics are declared in workbench/evaluation/registry.py"]


def test_results_all_metrics_fit_the_width(store):
    text = _cli(store, "results", "quickstart", "--all", COLUMNS="100").stdout
    assert max(len(line) for line in text.splitlines()) <= 100
    for name in ("Answer F1", "Hit@5", "MRR", "nDCG@10", "Chunk MRR", "Hallucination ↓", "Prompt tokens ↓", "Latency P95 ↓"):
        assert re.search(rf"^{re.escape(name)} ", text, re.M), name
    for run_id in store["run_ids"]:
        assert run_id[:8] in text


@pytest.mark.parametrize("columns", [72, 140])
def test_results_honour_the_real_terminal_width(store, columns):
    text = _in_terminal(store, columns, "results", "quickstart")
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= columns
    assert len(_run_lines(text)) == 6
    labels = [line for line in lines if RANK_LINE.match(line)]
    if columns >= 120:  # room for the whole label
        assert not any("…" in line for line in labels) and "sentence 128/16 | hybrid@5" in text  # "+title" is every run's: left out
    else:  # the label is shortened to fit the terminal, the numbers are not
        assert all("…" in line for line in labels) and max(len(line) for line in labels) > columns - 8


def test_compare_names_both_configurations(store):
    a, b = store["run_ids"][0], store["run_ids"][1]
    result = _cli(store, "compare", a[:8], b[:8], COLUMNS="400")
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    fake = "openai_compatible:fake"
    # (chunk context and the prompt are axes of their own: "+title", "| grounded_qa")
    assert first == (f"A: {a[:10]} (sentence 64/8 +title | {fake}-embedder | dense@5 | {fake}-llm | grounded_qa) vs "
                     f"B: {b[:10]} (sentence 64/8 +title | bm25@5 | {fake}-llm | grounded_qa), difference = B − A "
                     "(paired over the questions both answered)")
    data = json.loads(_cli(store, "compare", a[:8], b[:8], "--json").stdout)
    assert data["a"]["run_id"] == a and data["b"]["config"] == "sentence 64/8 +title | bm25@5 | openai_compatible:fake-llm | grounded_qa"
    assert data["difference"] == "b - a"


def test_csv_export_carries_the_run_id(store, tmp_path):
    run_id = store["run_ids"][2]
    result = _cli(store, "export", run_id[:8], "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0])[:2] == ["run_id", "query_id"] and len(rows) == 16
    assert {r["run_id"] for r in rows} == {run_id}
    jsonl = [json.loads(line) for line in _cli(store, "export", run_id[:8], "--format", "jsonl").stdout.splitlines()]
    assert {r["run_id"] for r in jsonl} == {run_id}


def test_experiment_chooses_the_leaderboard_columns(store, tmp_path):
    from workbench.config import load_experiment
    from workbench.errors import ConfigError
    from workbench.pipeline.plan import check_leaderboard
    from workbench.report.board import rank_runs
    from workbench.store import Store

    st = Store(store["url"])
    ranked = rank_runs(st, "quickstart", columns=["mrr", "citation_accuracy"])
    assert ranked.columns == ["mrr", "citation_accuracy"]
    # the defaults the runs measured (the fake LLM has no price: no cost column)
    assert rank_runs(st, "quickstart").columns == ["hit_at_5", "hallucination", "latency_p95_s"]
    exp = Path(store["root"]) / "quickstart.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text(exp.read_text(encoding="utf-8") + "leaderboard: {columns: [mrr, halucination]}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml: leaderboard\.columns\[1\]: unknown metric 'halucination' "
                                          r"\(did you mean 'hallucination'\?\)"):
        check_leaderboard(load_experiment(bad))


def test_short_labels_drop_the_words_every_run_shares():
    import pandas as pd

    from workbench.report.board import short_labels

    board = pd.DataFrame({"chunking": ["sentence 128/16 +title", "sentence 128/16 +title", "token 16/0 +title", "token 16/0 +title"],
                          "retrieval": ["dense@5", "bm25@5", "dense@5", "bm25@5"], "generation": ["smollm2"] * 4})
    assert short_labels(board) == ["sentence 128/16 | dense@5", "sentence 128/16 | bm25@5", "token 16/0 | dense@5", "token 16/0 | bm25@5"]
    # a shared last word that tells values apart only together with it stays ("+title" vs none)
    mixed = board.assign(chunking=["sentence 128/16 +title", "sentence 128/16", "token 16/0 +title", "token 16/0"])
    assert short_labels(mixed)[:2] == ["sentence 128/16 +title | dense@5", "sentence 128/16 | bm25@5"]
    # a stage a run does not use ("-") is left out, and the rest still lose their shared tail
    reranked = board.assign(rerank=["-", "-", "ms-marco x5 +title", "minilm x5 +title"])
    assert short_labels(reranked)[2:] == ["token 16/0 | dense@5 | ms-marco", "token 16/0 | bm25@5 | minilm"]  # "x5" is shared too
