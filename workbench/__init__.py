"""workbench: a RAG bake-off workbench (chunking x embedding x retrieval x rerank x LLM x prompt,
with quality, latency and cost evidence).

The public API, for notebooks and scripts::

    import workbench as wb

    ws = wb.Workspace.resolve()                                    # store, caches, reports
    plan = wb.plan_experiment(wb.load_experiment("experiments/quickstart.yaml"), ws)
    with wb.Runner(plan, ws) as runner:
        runner.run()
    wb.open_store().leaderboard("quickstart")

Names are loaded on first use, so ``import workbench`` loads no model library; everything not
listed in ``__all__`` is internal and may change.
"""

from __future__ import annotations

import importlib
from importlib import metadata as _metadata

# name -> "module:attribute" (relative to this package)
_EXPORTS = {
    "Components": "pipeline.components:Components",
    "ConfigError": "errors:ConfigError",
    "Dataset": "data.types:Dataset",
    "DatasetError": "errors:DatasetError",
    "Document": "data.types:Document",
    "Experiment": "config:Experiment",
    "ExperimentSpec": "config:ExperimentSpec",
    "Hit": "data.types:Hit",
    "MetricError": "errors:MetricError",
    "NotebookError": "errors:NotebookError",
    "Plan": "pipeline.plan:Plan",
    "PlannedRun": "pipeline.plan:PlannedRun",
    "ProviderError": "errors:ProviderError",
    "Query": "data.types:Query",
    "RaceSettings": "evaluation.sequential:RaceSettings",
    "RunConfig": "config:RunConfig",
    "RunSession": "pipeline.runner:RunSession",
    "Runner": "pipeline.runner:Runner",
    "Span": "data.types:Span",
    "Store": "store:Store",
    "StoreError": "errors:StoreError",
    "WorkbenchError": "errors:WorkbenchError",
    "Workspace": "settings:Workspace",
    "all_pairs": "compare:all_pairs",
    "compare_runs": "compare:compare_runs",
    "evaluate_gates": "gates:evaluate_gates",
    "execute": "pipeline.executors:execute",
    "export_run": "export:export_run",
    "flipped_questions": "compare:flipped_questions",
    "load_dataset": "data.loader:load_dataset",
    "load_experiment": "config:load_experiment",
    "main_effects": "effects:main_effects",
    "metric_info": "evaluation.registry:metric_info",
    "open_store": "store:open",
    "plan_experiment": "pipeline.plan:plan_experiment",
    "primary_metric": "evaluation.registry:primary_metric",
    "race_experiment": "pipeline.race:race_experiment",
    "render_report": "report.artifacts:render_report",
    "replay_race": "evaluation.sequential:replay_race",
    "reranker_gain": "compare:reranker_gain",
    "run_experiment": "pipeline.runner:run_experiment",
}

__all__ = sorted([*_EXPORTS, "__version__"])

try:
    __version__ = _metadata.version("workbench")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str):
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'workbench' has no attribute {name!r}")
    module, attr = target.split(":")
    value = getattr(importlib.import_module(f".{module}", __name__), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
