"""One index build split across a real 2-worker Ray cluster (tests/servers.py), with the vectors on
a Chroma server, against the same experiment built by one worker: identical vectors, identical
stored retrievals. One range task hits an embedding endpoint that fails once and is retried."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import write_xquad_slice
from tests.faultproxy import FaultProxy
from workbench.store import Store

pytestmark = pytest.mark.integration

def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True, env=env, timeout=1800)


def _experiment(tmp_path: Path, dataset: Path, e5_url: str) -> Path:
    # Two dense runs, two index builds: MiniLM in this process's torch (threads matter: --threads 1
    # on both sides) and e5 behind an OpenAI-compatible endpoint that the test makes fail once.
    # max_retries 0: the client does not retry, so the failure reaches the Ray task, which Ray retries.
    path = tmp_path / "split.yaml"
    path.write_text(f"""name: split
dataset: {dataset}
queries: {{limit: 12, seed: 3}}
grid:
  chunking: [{{splitter: sentence, chunk_size: 32, chunk_overlap: 4}}]
  embedding:
    - {{provider: local, model: all-MiniLM-L6-v2}}
    - {{provider: openai_compatible, model: multilingual-e5-small-q4, base_url: "{e5_url}", send_input_type: true,
        batch_size: 64, max_tokens: 512, max_retries: 0}}
  retrieval: [{{method: dense, top_k: 5}}]
""", encoding="utf-8")
    return path


def _rows(url: str) -> dict[str, pd.DataFrame]:
    """Every stored question row of each run, without what depends on timing or on the code version."""
    st = Store(url)
    out = {}
    for run_id in st.run_ids("split"):
        rows = st.questions(run_id)
        keep = [c for c in rows.columns if not re.search(r"latency|ttft", c) and c != "code_version"]
        out[run_id] = rows[keep].assign(n_chunks=st.run(run_id)["n_chunks"])
    return out


def _vectors(client, name: str) -> dict[str, np.ndarray]:
    got = client.get_collection(name).get(include=["embeddings"])
    return dict(zip(got["ids"], np.asarray(got["embeddings"], dtype=np.float32)))


def test_an_index_build_split_across_ray_tasks_equals_a_single_worker_build(tmp_path, e5_server, chroma_server, ray_cluster):
    from workbench.stages import index as index_mod

    dataset = write_xquad_slice(tmp_path / "data", n_docs=100)  # ~700 short chunks: two 512-chunk blocks, two ranges
    base = {k: v for k, v in os.environ.items() if not k.startswith("WORKBENCH_")}
    base["WORKBENCH_REPORTS"] = str(tmp_path / "reports")
    base["RAY_DEDUP_LOGS"] = "0"  # every range line reaches the output, none folded into "[repeated 2x]"
    with FaultProxy(e5_server) as proxy:
        exp = _experiment(tmp_path, dataset, proxy.base_url)
        single = {**base, "WORKBENCH_STORE": f"sqlite:///{tmp_path / 'single.sqlite'}", "WORKBENCH_CACHE": str(tmp_path / "single")}
        one = _cli("run", str(exp), "--no-report", "--threads", "1", env=single)
        assert one.returncode == 0, one.stderr[-3000:]
        assert proxy.faults.total() == 0

        proxy.schedule("500")  # the next embeddings request, made by one of the range tasks, fails
        split = {**base, "WORKBENCH_STORE": f"sqlite:///{tmp_path / 'split.sqlite'}", "WORKBENCH_CACHE": str(tmp_path / "split")}
        two = _cli("run", str(exp), "--no-report", "--executor", "ray", "--address", ray_cluster, "--chroma-url", chroma_server,
                   "--threads", "1", "--embed-workers", "2", env=split)
        assert two.returncode == 0, two.stderr[-3000:]
        assert proxy.faults["500"] == 1  # it failed once; the build still completed: Ray retried that range

    out = two.stdout + two.stderr
    assert out.count("embedded in 2 ranges by 2 Ray tasks): built") == 2, out[-3000:]
    assert out.count("    range [") == 4  # two ranges per index, each reported by the builder

    # identical vectors, chunk for chunk: the single build's embedded Chroma vs the split build's server
    local = index_mod.open_chroma(tmp_path / "single" / "chroma")
    server = index_mod.open_chroma_server(chroma_server)
    names = sorted(getattr(c, "name", c) for c in local.list_collections())
    assert len(names) == 2 and all(n.startswith("wb-") for n in names)
    for name in names:
        a, b = _vectors(local, name), _vectors(server, name)
        assert len(a) > index_mod.ADD_BATCH and a.keys() == b.keys()
        assert all(np.array_equal(a[k], b[k]) for k in a), name
    assert not any(getattr(c, "name", c).startswith(("tmp-", "lock-")) for c in server.list_collections())

    # identical retrievals: every stored hit (ids, scores, texts) and every metric of every question
    a, b = _rows(single["WORKBENCH_STORE"]), _rows(split["WORKBENCH_STORE"])
    assert list(a) == list(b) and len(a) == 2
    for run_id in a:
        assert len(a[run_id]) == 12 and a[run_id]["hits"].map(len).min() == 5
        pd.testing.assert_frame_equal(a[run_id], b[run_id])
