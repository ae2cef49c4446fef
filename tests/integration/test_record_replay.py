"""Record and replay of hosted calls, against the fake hosted provider on loopback (tests/fakehosted.py).

A hosted bake-off (embeddings, a /rerank API, two generation models, a judge) runs against the
server and is recorded as it goes; `workbench cassette export` writes its cassette; the server is
stopped and the key unset; `workbench run --replay` stores the same rows as the recorded run
(compared as bench/team.py compares stores). The key (a canary) is never in the cassette or the
recordings; a request the cassette lacks stops the replay with one line naming it; and two models
asked the same prompt keep their own answers (Ragas's cache once served one model's answers to
another).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.team import compare, snapshot
from tests.conftest import ROOT, write_xquad_slice
from tests.fakehosted import FakeHostedServer

pytestmark = pytest.mark.integration
CANARY = "sk-canary-7f3e9d2b41c86a05"
PROMPTS = ROOT / "experiments" / "prompts"


def _experiment(path: Path, dataset: Path, base_url: str, models=("model-a", "model-b")) -> Path:
    hosted = f'base_url: "{base_url}", api_key_env: CANARY_KEY'
    gens = "\n".join(f"    - {{provider: openai_compatible, model: {m}, {hosted}, prompt: {PROMPTS / 'grounded_qa.yaml'}, "
                     "max_tokens: 12, concurrency: 3}" for m in models)
    path.write_text(f"""name: hosted_bakeoff
dataset: {dataset}
queries: {{limit: 6, seed: 0}}
grid:
  chunking: [{{splitter: sentence, chunk_size: 96, chunk_overlap: 8}}]
  embedding: [{{provider: openai_compatible, model: fake-embed, {hosted}, batch_size: 7}}]
  retrieval: [{{method: dense, top_k: 3}}, {{method: bm25, top_k: 3}}]
  rerank: [{{method: none}}, {{method: hosted, model: fake-rerank, {hosted}, candidates: 6, top_n: 3}}]
  generation:
{gens}
judge: {{provider: openai_compatible, model: judge-j, {hosted}, prompt: {PROMPTS / 'judge_faithfulness.yaml'}}}
""", encoding="utf-8")
    return path


def _cli(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _files_contain(folder: Path, needle: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_record_export_replay_offline_gives_identical_rows(tmp_path, monkeypatch):
    from workbench.config.cassette import load_cassette
    from workbench.config.experiment import load_experiment
    from workbench.pipeline.plan import plan_experiment
    from workbench.pipeline.runner import run_experiment
    from workbench.settings import Workspace

    dataset = write_xquad_slice(tmp_path / "data", n_docs=12)
    rec = Workspace.resolve(store=f"sqlite:///{tmp_path / 'rec.sqlite'}", cache_dir=tmp_path / "rec-cache", root=tmp_path)
    monkeypatch.setenv("CANARY_KEY", CANARY)
    with FakeHostedServer(CANARY) as server:
        exp = _experiment(tmp_path / "hosted.yaml", dataset, server.base_url)
        summaries = run_experiment(plan_experiment(load_experiment(exp), rec), rec)  # recorded as the calls are made
        assert all(s["status"] == "complete" for s in summaries[:-1]) and len(summaries) == 9
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = _cli(["cassette", "export", "hosted_bakeoff", "-o", str(tmp_path / "hosted.cassette.json"), "--store", rec.store_url,
                     "--cache-dir", str(rec.cache_dir)], env, tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        calls_while_recording = sum(server.requests.values())
    assert "recorded answers" in done.stdout
    # the export replayed from the recordings: it sent nothing to the server
    assert calls_while_recording == sum(server.requests.values())

    cassette_path = tmp_path / "hosted.cassette.json"
    cassette = load_cassette(cassette_path)
    roles = {e.role for e in cassette.entries}
    assert roles == {"embedding", "rerank", "generation", "judge"}
    # no key, header or secret: the canary (sent in Authorization, echoed by the server in a header
    # and in every completion id) is in neither the cassette, nor the recordings, nor the store
    assert CANARY.encode() not in cassette_path.read_bytes()
    assert b"authorization" not in cassette_path.read_bytes().lower() and b"x-echo-key" not in cassette_path.read_bytes()
    assert _files_contain(rec.recordings_dir, CANARY) == [] and _files_contain(tmp_path / "rec.sqlite", CANARY) == []
    assert any("chatcmpl-***" in e.response.body for e in cassette.entries if e.role == "generation")

    # offline: the server is gone, the key unset; `workbench run --replay` stores the same rows
    env = {k: v for k, v in os.environ.items() if k != "CANARY_KEY"} | {"PYTHONPATH": str(ROOT)}
    replay_store = f"sqlite:///{tmp_path / 'replay.sqlite'}"
    done = _cli(["run", str(exp), "--replay", str(cassette_path), "--store", replay_store, "--cache-dir", str(tmp_path / "replay-cache"),
                 "--no-report"], env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "replaying" in done.stderr
    (a, _), (b, _) = snapshot(rec.store_url), snapshot(replay_store)
    n_rows = len({k[:3] for k in a if k[0] == "question"})
    assert n_rows == 8 * 6 and compare(a, b) == []


def test_two_models_same_prompt_never_share_answers_live_or_replayed(tmp_path, monkeypatch):
    """The leak Ragas had: a cache keyed without the model. Ours keys both the stage cache and the
    recordings by model: the same rendered prompt to model-a and model-b gets each model's answer."""
    from workbench.config.experiment import load_experiment
    from workbench.pipeline.plan import plan_experiment
    from workbench.pipeline.replay import export_cassette
    from workbench.pipeline.runner import run_experiment
    from workbench.settings import Workspace
    from workbench.store import Store

    dataset = write_xquad_slice(tmp_path / "data", n_docs=8)
    ws = Workspace.resolve(store=f"sqlite:///{tmp_path / 'a.sqlite'}", cache_dir=tmp_path / "cache", root=tmp_path)
    monkeypatch.setenv("CANARY_KEY", CANARY)
    with FakeHostedServer(CANARY) as server:
        exp = tmp_path / "two.yaml"
        exp.write_text(_experiment(tmp_path / "x.yaml", dataset, server.base_url).read_text()
                       .replace("[{method: dense, top_k: 3}, {method: bm25, top_k: 3}]", "[{method: bm25, top_k: 3}]")
                       .replace("rerank: [{method: none}, ", "rerank: [").replace("judge:", "#judge:"))
        plan = plan_experiment(load_experiment(exp), ws)
        run_experiment(plan, ws)
        export_cassette("hosted_bakeoff", ws, tmp_path / "two.json")
    store = Store(ws.store_url)
    answers = {}
    for run in plan.runs:
        rows = store.questions(run.run_id).set_index("query_id")
        answers[run.config.generation.model] = rows["answer"]
        assert rows["answer"].str.startswith(f"({run.config.generation.model})").all()
    assert (answers["model-a"] != answers["model-b"]).all()
    # the same prompts were asked of both models: each model's answer is its own entry in the cassette
    cassette = json.loads((tmp_path / "two.json").read_text())
    gen = [e for e in cassette["entries"] if e["role"] == "generation"]
    prompts = {}
    for e in gen:
        prompts.setdefault(json.dumps(e["request"]["messages"]), {})[e["model"]] = e["response"]["body"]
    assert len(prompts) == 6 and all(set(by_model) == {"model-a", "model-b"} for by_model in prompts.values())
    assert all(by_model["model-a"] != by_model["model-b"] for by_model in prompts.values())
    # replayed offline into a fresh store and cache: still each model's own answers
    monkeypatch.delenv("CANARY_KEY")
    replay = Workspace.resolve(store=f"sqlite:///{tmp_path / 'b.sqlite'}", cache_dir=tmp_path / "cache-b", root=tmp_path,
                               replay=tmp_path / "two.json")
    run_experiment(plan_experiment(load_experiment(exp), replay), replay)
    for run in plan.runs:
        replayed = Store(replay.store_url).questions(run.run_id).set_index("query_id")["answer"]
        assert replayed.equals(answers[run.config.generation.model])


def test_a_request_missing_from_the_cassette_is_one_line_naming_it(tmp_path, monkeypatch):
    from workbench.config.experiment import load_experiment
    from workbench.pipeline.plan import plan_experiment
    from workbench.pipeline.replay import export_cassette
    from workbench.pipeline.runner import run_experiment
    from workbench.providers.recording import ReplayError
    from workbench.settings import Workspace

    dataset = write_xquad_slice(tmp_path / "data", n_docs=8)
    ws = Workspace.resolve(store=f"sqlite:///{tmp_path / 'a.sqlite'}", cache_dir=tmp_path / "cache", root=tmp_path)
    monkeypatch.setenv("CANARY_KEY", CANARY)
    with FakeHostedServer(CANARY) as server:
        exp = _experiment(tmp_path / "one.yaml", dataset, server.base_url, models=("model-a",))
        run_experiment(plan_experiment(load_experiment(exp), ws), ws)
        export_cassette(str(exp), ws, tmp_path / "one.json.gz")
        url = server.base_url
    monkeypatch.delenv("CANARY_KEY")
    # the same bake-off with a model that was never asked: strict replay stops at its first request
    bigger = _experiment(tmp_path / "bigger.yaml", dataset, url, models=("model-a", "model-c"))
    replay = Workspace.resolve(store=f"sqlite:///{tmp_path / 'b.sqlite'}", cache_dir=tmp_path / "cache-b", root=tmp_path,
                               replay=tmp_path / "one.json.gz")
    with pytest.raises(ReplayError) as err:
        run_experiment(plan_experiment(load_experiment(bigger), replay), replay)
    msg = str(err.value)
    assert "\n" not in msg and "one.json.gz: no recorded answer for the generation request to openai_compatible:model-c" in msg
    assert f"{url}/chat/completions" in msg and "request hash" in msg
