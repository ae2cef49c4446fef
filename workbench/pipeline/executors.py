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

import importlib.util
import os
import time

from ..errors import ConfigError, WorkbenchError, did_you_mean
from ..settings import EXECUTORS, OFFLINE_DEFAULTS, Workspace
from ..store import Store
from .plan import Plan
from .progress import NullProgress, Progress

# The run machinery (components, runner, race: Chroma and LlamaIndex, about 2.5 s to import) is
# imported where a run happens. `workbench run` and `plan` import this module only to check the
# executor and hand the run to the notebook's kernel, which does the importing once.

CPUS_PER_TASK = 1  # default threads (and Ray CPUs) per task; --threads / $WORKBENCH_THREADS sets it
# Non-secret settings every worker needs (offline models, no telemetry); API keys are never shipped.
WORKER_ENV = (*OFFLINE_DEFAULTS, "WORKBENCH_PRICES")


def check_executor(workspace: Workspace) -> None:
    """Validate the executor settings before any work (one-line errors)."""
    if workspace.executor not in EXECUTORS:
        raise ConfigError(f"executor {workspace.executor!r}: expected one of {', '.join(EXECUTORS)}{did_you_mean(workspace.executor, EXECUTORS)}")
    if workspace.embed_workers and workspace.embed_workers > 1 and workspace.executor != "ray":
        raise ConfigError(f"embed workers ({workspace.embed_workers}) split index builds across a Ray cluster: "
                          "they need --executor ray (and --address)")
    if workspace.executor == "ray":
        if importlib.util.find_spec("ray") is None:
            raise WorkbenchError("executor 'ray' needs the ray package: pip install 'workbench[ray]'")
        if not workspace.ray_address:
            raise WorkbenchError("executor 'ray' needs the cluster address: --address HOST:PORT (or 'auto' for the cluster "
                                 "started on this machine by `ray start`), or $WORKBENCH_RAY_ADDRESS")


def execute(plan: Plan, workspace: Workspace, *, rerun: str = "missing", progress: Progress | None = None) -> list[dict]:
    """Run every grid point of ``plan`` where the workspace says: here, or on a Ray cluster; or
    race them here when the experiment says ``search: {strategy: race}``."""
    from .race import race_experiment
    from .runner import Runner

    check_executor(workspace)
    progress = progress or NullProgress()
    if plan.experiment.spec.search.is_race:
        if workspace.executor == "ray":  # rounds need every survivor's rows before the next decision
            raise WorkbenchError(f"{plan.experiment.path}: search.strategy: a race runs on the local executor (got --executor ray)")
        return race_experiment(plan, workspace, rerun=rerun, progress=progress)
    if workspace.executor == "ray":
        return run_on_ray(plan, workspace, rerun=rerun, progress=progress)
    with Runner(plan, workspace, progress=progress) as runner:
        return runner.run(rerun=rerun)


def task_threads(workspace: Workspace) -> int:
    """Threads per Ray task (each task reserves that many CPUs): the workspace's, else 1."""
    return workspace.threads or CPUS_PER_TASK


def _run_point(plan: Plan, index: int, workspace: Workspace, rerun: str) -> dict:
    """One grid point, in a Ray worker process, with its own components."""
    from .components import Components
    from .progress import LineProgress
    from .runner import Runner
    from .splitbuild import RaySplitter

    progress = LineProgress()
    splitter = RaySplitter(workspace, log=progress.message)
    with Components(plan, workspace, splitter=splitter, progress=progress) as components, \
            Runner(plan, workspace, components=components, progress=progress) as runner:
        run = plan.runs[index]
        runner.progress.message(f"[{index + 1}/{len(plan.runs)}] run {run.run_id}: {run.label}")
        summary = runner.run_one(run, rerun)
        return {**summary, **components.timings, "stages": components.meter.to_list()}


def _connect(ray, workspace: Workspace) -> float:
    env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
    try:
        ray.init(address=workspace.ray_address, runtime_env={"env_vars": env}, log_to_driver=True,
                 logging_level="WARNING", configure_logging=True)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError depending on what is wrong
        raise WorkbenchError(f"Ray cluster {workspace.ray_address}: cannot connect ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < task_threads(workspace):  # tasks would wait forever for CPUs no node offers
        raise WorkbenchError(f"Ray cluster {workspace.ray_address}: {cpus:g} CPUs alive, a task needs {task_threads(workspace)} "
                             "(is a node up? see `ray status`)")
    return cpus


def run_on_ray(plan: Plan, workspace: Workspace, *, rerun: str, progress: Progress) -> list[dict]:
    """Run every grid point of ``plan`` as a task on the Ray cluster at ``workspace.ray_address``.

    Returns the runs' summaries in plan order. A failed task does not stop the others; the failures
    are raised together at the end as one ``WorkbenchError`` (stored rows stay: a rerun resumes).
    """
    import ray

    from .runner import save_experiment

    t0 = time.perf_counter()
    try:
        cpus = _connect(ray, workspace)
        progress.message(f"ray: {len(plan.runs)} grid points on {workspace.ray_address} ({cpus:g} CPUs), "
                         f"connected in {time.perf_counter() - t0:.1f}s")
        save_experiment(Store(workspace.store_url), plan)
        task = ray.remote(num_cpus=task_threads(workspace), max_retries=1)(_run_point)
        worker_ws = workspace.replace(threads=task_threads(workspace), executor="local", ray_address=None)
        plan_ref = ray.put(plan)
        pending = {task.remote(plan_ref, i, worker_ws, rerun): i for i in range(len(plan.runs))}
        return _collect(ray, plan, pending, progress)
    finally:
        ray.shutdown()


def _collect(ray, plan: Plan, pending: dict, progress: Progress) -> list[dict]:
    summaries: dict[int, dict] = {}
    errors: list[str] = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(done[0])
        run_id = plan.runs[i].run_id
        try:
            summaries[i] = ray.get(done[0])
            progress.message(f"ray: run {run_id} {summaries[i]['status']} ({len(summaries) + len(errors)}/{len(plan.runs)})")
            progress.update("grid", "runs", len(summaries) + len(errors), len(plan.runs), "runs done")
        except Exception as exc:  # RayTaskError wraps the worker's exception
            cause = getattr(exc, "cause", None) or exc
            errors.append(f"run {run_id}: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}")
    if errors:
        raise WorkbenchError(f"{len(errors)} of {len(plan.runs)} runs failed on the Ray cluster: " + "; ".join(errors))
    return [summaries[i] for i in range(len(plan.runs))]

