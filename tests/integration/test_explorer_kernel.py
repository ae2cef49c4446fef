"""One local LLM server per kernel: the explorer in a real Jupyter kernel, with the real SmolLM2
server behind live queries.

Two experiments, each with a generation run on the local LLM, share one store. In one kernel the
user runs a live query in the first, switches the experiment dropdown and asks through the query
box in the second, then does "Run All" (a new explorer) and asks again. Exactly one
``llama_cpp.server`` is a child of the kernel throughout, the same process every time; shutting the
kernel down stops it.
"""

from __future__ import annotations

import json
import os
import time

import psutil
import pytest

from tests.conftest import ROOT, write_xquad_slice

pytestmark = pytest.mark.integration

PROMPT = ROOT / "experiments" / "prompts" / "grounded_qa.yaml"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    from workbench.config import load_experiment
    from workbench.pipeline.plan import plan_experiment
    from workbench.pipeline.runner import run_experiment
    from workbench.settings import Workspace

    root = tmp_path_factory.mktemp("kernel-llm")
    data = write_xquad_slice(root / "data", n_docs=6, n_queries=6)
    ws = Workspace.resolve(store=f"sqlite:///{root / 'wb.sqlite'}", cache_dir=root / "cache", threads=1, root=root)
    for name, seed in (("exp_a", 0), ("exp_b", 1)):
        path = root / f"{name}.yaml"
        path.write_text(f"""name: {name}
dataset: {data}
queries: {{limit: 2, seed: {seed}}}
grid:
  chunking: [{{splitter: none}}]
  retrieval: [{{method: bm25, top_k: 2}}]
  generation: [{{provider: local, model: smollm2-135m, prompt: {PROMPT}, max_tokens: 12}}]
""", encoding="utf-8")
        run_experiment(plan_experiment(load_experiment(path), ws), ws)
    return {"url": ws.store_url, "cache": str(ws.cache_dir), "root": root}


class Kernel:
    """A python3 kernel (as JupyterLab starts one) and a way to run code in it and read what it prints."""

    def __init__(self, cwd):
        from jupyter_client import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(cwd=str(cwd), env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)

    @property
    def pid(self) -> int:
        return self.km.provisioner.process.pid

    def run(self, code: str) -> dict:
        """Execute ``code``; it prints one JSON line, returned here. A cell error fails the test."""
        printed, errors = [], []

        def hook(msg):
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                printed.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                errors.append("\n".join(msg["content"]["traceback"]))

        reply = self.kc.execute_interactive(code, timeout=600, output_hook=hook)
        assert reply["content"]["status"] == "ok" and not errors, errors
        return json.loads("".join(printed).strip().splitlines()[-1])

    def shutdown(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)  # a shutdown request, as JupyterLab's "Shut Down Kernel"


def _llm_servers(kernel_pid: int) -> list[int]:
    kids = psutil.Process(kernel_pid).children(recursive=True)
    return [p.pid for p in kids if any("llama_cpp.server" in part for part in p.cmdline())]


def test_one_llm_server_per_kernel_reused_and_stopped_at_shutdown(store):
    kernel = Kernel(store["root"])
    try:
        setup = f"URL, CACHE = {store['url']!r}, {store['cache']!r}\n"
        first = kernel.run(setup + """
import json
from workbench import explore
explorer = explore.Explorer(URL, "exp_a", cache_dir=CACHE)
row = explorer.try_query("Who was the Super Bowl 50 MVP?")
print(json.dumps({"pids": explore.kernel_servers().pids, "answered": bool(row["answer"]), "error": row["error"]}))
""")
        assert first["answered"] and first["error"] is None and len(first["pids"]) == 1
        server = first["pids"][0]
        assert _llm_servers(kernel.pid) == [server]

        switched = kernel.run("""
ui = explorer.widget()
ui.children[1].value = "exp_b"  # the experiment dropdown, as a click sets it
text, config, button, result = explorer.try_query_widget().children
text.value = "Which team won the game?"
button.click()
print(json.dumps({"experiment": explorer.experiment, "config": config.value, "result": result.value[:2000],
                  "pids": explore.kernel_servers().pids}))
""")
        assert switched["experiment"] == "exp_b" and "Error" not in switched["result"] and "Which team won the game?" in switched["result"]
        assert switched["pids"] == [server] and _llm_servers(kernel.pid) == [server]

        run_all = kernel.run("""
explorer = explore.Explorer(URL, "exp_a", cache_dir=CACHE)  # "Run All": a new explorer in the same kernel
row = explorer.try_query("How many points did the Panthers score?")
print(json.dumps({"pids": explore.kernel_servers().pids, "answered": bool(row["answer"])}))
""")
        assert run_all["answered"] and run_all["pids"] == [server] and _llm_servers(kernel.pid) == [server]
    finally:
        kernel_pid = kernel.pid
        kernel.shutdown()
    deadline = time.time() + 30
    while psutil.pid_exists(server) and psutil.Process(server).status() != psutil.STATUS_ZOMBIE and time.time() < deadline:
        time.sleep(0.2)
    assert not psutil.pid_exists(server) or psutil.Process(server).status() == psutil.STATUS_ZOMBIE, "the LLM server outlived its kernel"
    assert not psutil.pid_exists(kernel_pid) or psutil.Process(kernel_pid).status() == psutil.STATUS_ZOMBIE
