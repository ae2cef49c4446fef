"""Progress: what the runner reports (the grid, each run's questions, each index build), and how the
CLI shows the notebook kernel's structured progress lines: rich bars on a terminal, periodic plain
lines with rate and ETA otherwise."""

from __future__ import annotations

import io
import re

from rich.console import Console

from tests.unit.test_run_core import _experiment
from workbench.cli.progress import KernelOutput, PlainLines, RichBars, kernel_progress
from workbench.config import load_experiment
from workbench.pipeline.plan import plan_experiment
from workbench.pipeline.progress import EVENT_PREFIX, EventProgress, LineProgress, make_progress, parse_event
from workbench.pipeline.runner import Runner
from workbench.settings import Workspace
from workbench.testing import fake_components


class Recorder:
    def __init__(self):
        self.messages: list[str] = []
        self.updates: list[tuple] = []

    def message(self, text: str) -> None:
        self.messages.append(text)

    def update(self, key, description, done, total, unit=""):
        self.updates.append((key, description, done, total, unit))


def test_the_runner_reports_the_grid_the_questions_and_the_index_build(tmp_path):
    ws = Workspace.resolve(store=f"sqlite:///{tmp_path / 'wb.sqlite'}", cache_dir=tmp_path / "cache", threads=1, root=tmp_path)
    plan = plan_experiment(load_experiment(_experiment(tmp_path, n_queries=10)), ws)
    progress = Recorder()
    with Runner(plan, ws, components=fake_components(plan, ws), progress=progress) as runner:
        runner.run()
    grid = [(done, total) for key, _, done, total, _ in progress.updates if key == "grid"]
    assert grid == [(0, 2), (1, 2), (2, 2)]
    index = [u for u in progress.updates if u[0].startswith("index:")]
    assert index and index[-1][2] == index[-1][3] > 0 and index[-1][4] == "chunks embedded"
    assert index[-1][1] == "index fake-embedder"
    for run in plan.runs:
        done = [u[2] for u in progress.updates if u[0] == f"questions:{run.run_id}"]
        assert done == sorted(done) and done[-1] == 10
    assert any(m.startswith("index wb-") and m.endswith("built") for m in progress.messages)
    assert [m for m in progress.messages if m.startswith("[")] == [f"[{i}/2] run {r.run_id}: {r.label}" for i, r in enumerate(plan.runs, 1)]


def test_events_travel_as_lines_and_come_back_as_updates():
    lines: list[str] = []
    EventProgress(lines.append).update("questions:abc", "abc", 8, 40, "questions computed")
    EventProgress(lines.append).message("[1/2] run abc: bm25@5")
    assert lines[0].startswith(EVENT_PREFIX) and lines[1] == "[1/2] run abc: bm25@5"
    assert parse_event(lines[0]) == {"key": "questions:abc", "description": "abc", "done": 8, "total": 40, "unit": "questions computed"}
    assert parse_event(lines[1]) is None and parse_event(EVENT_PREFIX + "{not json") is None
    assert isinstance(make_progress("lines"), LineProgress)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_are_periodic_with_rate_and_eta():
    """The kernel's output in arbitrary chunks (as papermill streams it): events become at most one
    line per task per interval plus one when it completes; other lines pass through unchanged."""
    shown: list[str] = []
    clock = Clock()
    stream = KernelOutput(PlainLines(shown.append, interval_s=10, clock=clock))
    events = []
    EventProgress(events.append).message("[1/1] run abc: bm25@5")
    for done in range(0, 41, 8):
        EventProgress(events.append).update("questions:abc", "abc", done, 40, "questions computed")
    text = "".join(e + "\n" for e in events)
    # first line whole, the rest split in odd places
    stream.write(text[:30])
    stream.write(text[30:95])
    cut = text.index("\n", 200)
    stream.write(text[95:cut])
    clock.now += 4  # 8 -> 16 questions: within the interval, nothing new shown
    stream.write(text[cut:cut + 1])
    for chunk_start in range(cut + 1, len(text), 57):
        clock.now += 2
        stream.write(text[chunk_start:chunk_start + 57])
    stream.close()
    assert shown[0] == "[1/1] run abc: bm25@5"
    progress = shown[1:]
    assert progress[0] == "    abc: 0/40 questions computed (0%)"
    assert progress[-1].startswith("    abc: 40/40 questions computed (100%, ") and re.search(r"in 0:\d\d\)$", progress[-1])
    assert len(progress) < 6  # periodic, not one line per event
    middle = [p for p in progress[1:-1]]
    assert all(re.search(r"\(\d+%, [\d.]+/s, ETA \d+:\d\d\)$", p) for p in middle), middle
    assert not any(EVENT_PREFIX in s for s in shown)


def test_rich_bars_show_counts_rate_and_eta_and_a_line_per_finished_task():
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100, color_system=None)
    with RichBars(console) as bars:
        stream = KernelOutput(bars)
        events: list[str] = []
        progress = EventProgress(events.append)
        progress.update("grid", "runs", 0, 2, "runs done")
        progress.message("[1/2] run abc: dense@5")
        for done in (512, 1024, 1200):
            progress.update("index:wb-1", "index all-MiniLM-L6-v2", done, 1200, "chunks embedded")
        for done in (8, 16):
            progress.update("questions:abc", "abc", done, 40, "questions computed")
        stream.write("".join(e + "\n" for e in events))
        bars.display.refresh()
        live = buffer.getvalue()
        for done in (24, 32, 40):
            progress.update("questions:abc", "abc", done, 40, "questions computed")
        progress.update("grid", "runs", 1, 2, "runs done")
        stream.write("".join(e + "\n" for e in events[-4:]))
        stream.close()
    out = buffer.getvalue()
    assert "runs" in live and "16/40" in live and "questions" in live and "━" in live
    assert re.search(r"abc .*16/40 questions", live)
    assert "[1/2] run abc: dense@5" in out
    assert "index all-MiniLM-L6-v2: 1200/1200 chunks embedded" in out  # a finished build leaves one line
    assert "abc: 40/40 questions computed" in out
    assert EVENT_PREFIX not in out


def test_kernel_progress_picks_plain_lines_when_output_is_not_a_terminal():
    buffer = io.StringIO()
    console = Console(file=buffer, width=100)
    assert not console.is_terminal
    with kernel_progress(console) as stream:
        assert isinstance(stream.view, PlainLines)
        stream.write(EVENT_PREFIX + '{"key": "grid", "description": "runs", "done": 2, "total": 2, "unit": "runs done"}\nplain\n')
    assert buffer.getvalue().splitlines() == ["    runs: 2/2 runs done (100%)", "plain"]
