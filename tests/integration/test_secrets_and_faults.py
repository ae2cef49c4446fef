"""An OpenAI-compatible endpoint configured like a hosted one (the local llama.cpp server), with a
recognisable fake API key: the key must not appear in any artifact. A dead endpoint makes every
question fail with its error stored and counted, never dropped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_xquad_slice

pytestmark = pytest.mark.integration

FAKE_KEY = "sk-wbtest-DO-NOT-LEAK-7f3a9c1e5b"


def _experiment(path: Path, dataset: Path, base_url: str, name: str) -> Path:
    prompt = Path(__file__).resolve().parents[2] / "experiments" / "prompts" / "grounded_qa.yaml"
    path.write_text(f"""name: {name}
dataset: {dataset}
queries: {{limit: 3, seed: 0}}
grid:
  chunking: [{{splitter: none}}]
  retrieval: [{{method: bm25, top_k: 2}}]
  generation:
    - {{provider: openai_compatible, model: smollm2-135m, base_url: "{base_url}", api_key_env: WB_TEST_KEY,
        prompt: {prompt}, max_tokens: 16, timeout_s: 20, concurrency: 2, requests_per_minute: 600}}
""", encoding="utf-8")
    return path


def _all_artifact_bytes(root: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in root.rglob("*") if p.is_file()]


def test_api_key_never_lands_in_artifacts(tmp_path):
    from workbench.providers.llm_server import LocalLLMServer

    dataset = write_xquad_slice(tmp_path / "data", n_docs=10)
    work = tmp_path / "work"
    env = dict(os.environ, WB_TEST_KEY=FAKE_KEY, WORKBENCH_STORE=f"sqlite:///{work / 'wb.sqlite'}",
               WORKBENCH_CACHE=str(work / "cache"), WORKBENCH_REPORTS=str(work / "reports"))
    with LocalLLMServer("smollm2-135m", n_threads=2, log_dir=work / "server-logs") as server:
        exp = _experiment(tmp_path / "hosted.yaml", dataset, server.base_url, "hosted_like")
        ok = subprocess.run([sys.executable, "-m", "workbench", "run", str(exp)], env=env, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr
    # a dead endpoint: every question fails, with its error stored and the run marked failed
    dead = _experiment(tmp_path / "dead.yaml", dataset, "http://127.0.0.1:9/v1", "dead_endpoint")
    bad = subprocess.run([sys.executable, "-m", "workbench", "run", str(dead), "--no-report"], env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 0, bad.stderr

    from workbench.store import Store

    st = Store(env["WORKBENCH_STORE"])
    good = st.questions(st.run_ids("hosted_like")[0])
    assert len(good) == 3 and good["error"].isna().all() and (good["answer"].str.len() > 0).all()
    failed_run = st.runs("dead_endpoint").iloc[0]
    assert failed_run["status"] == "failed" and failed_run["n_failed"] == 3
    rows = st.questions(failed_run["run_id"])
    assert len(rows) == 3 and rows["error"].str.contains("Connection").all()
    assert rows["f1"].isna().all() if "f1" in rows else True

    leaks = [str(p) for p, data in _all_artifact_bytes(work) if FAKE_KEY.encode() in data]
    assert not leaks, f"API key found in {leaks}"
    for stream in (ok.stdout, ok.stderr, bad.stdout, bad.stderr):
        assert FAKE_KEY not in stream
    # executed notebooks and reports are covered by the artifact scan above; the key reached the
    # server only as a request header
    assert any(p.suffix == ".html" for p, _ in _all_artifact_bytes(work / "reports"))


def test_missing_key_is_a_clear_error_before_any_work(tmp_path):
    dataset = write_xquad_slice(tmp_path / "data", n_docs=5)
    exp = _experiment(tmp_path / "nokey.yaml", dataset, "http://127.0.0.1:9/v1", "nokey")
    env = {k: v for k, v in os.environ.items() if k != "WB_TEST_KEY"}
    env.update(WORKBENCH_STORE=f"sqlite:///{tmp_path / 'wb.sqlite'}", WORKBENCH_CACHE=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-m", "workbench", "run", str(exp)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "WB_TEST_KEY is not set" in result.stderr and len(result.stderr.strip().splitlines()) <= 2
    assert not (tmp_path / "wb.sqlite").exists()
