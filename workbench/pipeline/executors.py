"""Executors: where the grid points of a plan run.

``local`` (the default) runs them one after the other in this process (``runner.run_experiment``).
``ray`` fans them out to a Ray cluster (``ray start --head`` on one machine, ``ray start
--address=HEAD:6379`` on the others): one task per grid point, each task opening the shared results
store and the shared index itself, so results land where a local run would put them. The plan --
validated, with its run ids, dataset and questions -- is computed once by the driver and shipped to
the workers through Ray's object store, so every worker computes exactly the runs the driver planned.

Workers need the same workbench installation as the driver (same image or environment), the files
the experiment names (prompts, local model folders) at the same paths, the API keys of hosted
providers in their own environment (they are never shipped through Ray), and a store and Chroma
that every node reaches: PostgreSQL and a Chroma server for a multi-machine cluster.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import WorkbenchError

EXECUTORS = ("local", "ray")
CPUS_PER_TASK = 1  # default threads (and Ray CPUs) per task; $WORKBENCH_THREADS / --threads sets it
# Non-secret settings every worker needs (offline models, no telemetry); API keys are never shipped.
WORKER_ENV = ("ANONYMIZED_TELEMETRY", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS",
              "ORT_DISABLE_TELEMETRY", "TOKENIZERS_PARALLELISM", "WORKBENCH_PRICES")


def check_executor(executor: str, address: str | None) -> None:
    """Validate ``--executor``/``--address`` before any work (one-line errors)."""
    if executor not in EXECUTORS:
        from ..errors import ConfigError, did_you_mean

        raise ConfigError(f"executor {executor!r}: expected one of {', '.join(EXECUTORS)}{did_you_mean(executor, EXECUTORS)}")
    if executor == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise WorkbenchError("executor 'ray' needs the ray package: pip install 'workbench[ray]'")
        if not address:
            raise WorkbenchError("executor 'ray' needs the cluster address: --address HOST:PORT (or 'auto' for the cluster "
                                 "started on this machine by `ray start`), or $WORKBENCH_RAY_ADDRESS")


def task_threads() -> int:
    """Threads per Ray task (each task reserves that many CPUs): ``$WORKBENCH_THREADS``, else 1."""
    return int(os.environ.get("WORKBENCH_THREADS") or CPUS_PER_TASK)


def _portable(workspace):
    """The workspace as a worker must see it: absolute paths, this executor not repeated."""
    from ..report.artifacts import _absolute_sqlite

    return dataclasses.replace(workspace, store_url=_absolute_sqlite(workspace.store_url), cache_dir=Path(workspace.cache_dir).resolve(),
                               threads=task_threads(), executor="local", ray_address=None)


def _run_point(plan, index: int, workspace, rerun: str) -> dict:
    """One grid point, in a Ray worker process."""
    from .runner import run_planned

    return run_planned(plan, workspace, index, rerun=rerun, log=lambda message: print(message, flush=True))


def run_on_ray(plan, workspace, *, rerun: str, log: Callable[[str], None],
               progress: Callable[[str, int, int], None]) -> list[dict]:
    """Run every grid point of ``plan`` as a task on the Ray cluster at ``workspace.ray_address``.

    Returns the runs' summaries in plan order. A failed task does not stop the others; the failures
    are raised together at the end as one ``WorkbenchError`` (stored rows stay: a rerun resumes).
    """
    check_executor("ray", workspace.ray_address)
    import ray

    env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
    t0 = time.perf_counter()
    try:
        ray.init(address=workspace.ray_address, runtime_env={"env_vars": env}, log_to_driver=True,
                 logging_level="WARNING", configure_logging=True)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError depending on what is wrong
        raise WorkbenchError(f"Ray cluster {workspace.ray_address}: cannot connect ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    try:
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < task_threads():  # tasks would wait forever for CPUs no node offers
            raise WorkbenchError(f"Ray cluster {workspace.ray_address}: {cpus:g} CPUs alive, a task needs {task_threads()} "
                                 "(is a node up? see `ray status`)")
        log(f"ray: {len(plan.runs)} grid points on {workspace.ray_address} ({cpus:g} CPUs), connected in {time.perf_counter() - t0:.1f}s")
        task = ray.remote(num_cpus=task_threads(), max_retries=1)(_run_point)
        plan_ref = ray.put(plan)
        ws = _portable(workspace)
        pending = {task.remote(plan_ref, i, ws, rerun): i for i in range(len(plan.runs))}
        summaries: dict[int, dict] = {}
        errors: list[str] = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            run_id = plan.runs[i].run_id
            try:
                summaries[i] = ray.get(done[0])
                progress(run_id, summaries[i].get("computed", 0), summaries[i].get("computed", 0))
                log(f"ray: run {run_id} {summaries[i]['status']} ({len(summaries) + len(errors)}/{len(plan.runs)})")
            except Exception as exc:  # RayTaskError wraps the worker's exception
                cause = getattr(exc, "cause", None) or exc
                errors.append(f"run {run_id}: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}")
        if errors:
            raise WorkbenchError(f"{len(errors)} of {len(plan.runs)} runs failed on the Ray cluster: " + "; ".join(errors))
        return [summaries[i] for i in range(len(plan.runs))]
    finally:
        ray.shutdown()
