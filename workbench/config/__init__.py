"""Experiment files and the specs they declare (see :mod:`.experiment`)."""

from .experiment import (
    RESILIENCE_FIELDS,
    BaselineSpec,
    BudgetSpec,
    ChunkingSpec,
    EmbeddingSpec,
    Experiment,
    ExperimentSpec,
    GenerationSpec,
    GridSpec,
    JudgeSpec,
    RerankSpec,
    RetrievalSpec,
    RunConfig,
    expand_grid,
    load_experiment,
    parse_experiment,
)

__all__ = [
    "RESILIENCE_FIELDS",
    "BaselineSpec",
    "BudgetSpec",
    "ChunkingSpec",
    "EmbeddingSpec",
    "Experiment",
    "ExperimentSpec",
    "GenerationSpec",
    "GridSpec",
    "JudgeSpec",
    "RerankSpec",
    "RetrievalSpec",
    "RunConfig",
    "expand_grid",
    "load_experiment",
    "parse_experiment",
]
