"""The experiment's ``search:`` block, resolved against the metric registry and the plan.

``config/experiment.py`` checks the block's shape (strategy, margin, alpha, round sizes); what needs
the metric registry or the sampled questions is checked here, when the experiment is planned, with
the same one-line errors naming the file, line and field: an unknown metric (with a suggestion), a
metric the race cannot use (not a per-question score in [0, 1], or an answer metric in a grid
without answers, or hit@5 for a run that retrieves one chunk), a constraint that is not a latency
or a cost, and a race without enough questions to ever eliminate anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..config import Experiment, RunConfig
from ..config.yamlfile import read_yaml, yaml_line
from ..errors import ConfigError, MetricError, WorkbenchError
from ..evaluation.perquestion import cutoffs_for
from ..evaluation.registry import Direction, Kind, Metric, metric_info
from ..evaluation.sequential import RaceSettings, default_metric, make_constraint, min_questions_to_eliminate, search_settings

# Per-question scores in [0, 1] with a better direction: what a paired confidence sequence races on.
RACE_KINDS = frozenset({Kind.RETRIEVAL, Kind.CHUNK_RETRIEVAL, Kind.ANSWER, Kind.GROUNDEDNESS, Kind.JUDGE})
ANSWER_KINDS = frozenset({Kind.ANSWER, Kind.GROUNDEDNESS, Kind.JUDGE})
AT_K = ("hit_at_", "recall_at_", "precision_at_")


@dataclass(frozen=True)
class Search:
    """A resolved race: what it races on, in which direction, and its statistical settings."""

    metric: str
    lower_is_better: bool
    settings: RaceSettings
    seed: int
    prune_metric: str | None = None
    prune_lower_is_better: bool = False
    prune_settings: RaceSettings | None = None


def search_error(experiment: Experiment, field: str, message: str) -> ConfigError:
    """``file:line: search.<field>: message``, the line found in the experiment file's YAML."""
    line = None
    try:
        _, _, root = read_yaml(experiment.path, "experiment file")
        line = yaml_line(root, tuple(int(p) if p.isdigit() else p for p in field.split(".")))
    except WorkbenchError:
        pass
    return ConfigError(f"{experiment.path}{f':{line}' if line else ''}: {field}: {message}")


def _race_metric(experiment: Experiment, field: str, name: str, configs: Sequence[RunConfig]) -> Metric:
    try:
        info = metric_info(name)
    except MetricError as exc:
        raise search_error(experiment, field, str(exc)) from None
    if info.kind not in RACE_KINDS or info.direction is Direction.NONE or info.name.endswith("_rate"):
        raise search_error(experiment, field, f"{name!r} is a {info.kind.value} metric; a race compares per-question quality scores "
                                              "in [0, 1] with a better direction (f1, exact_match, contains_gold, ndcg_at_10, mrr, hit_at_k, ...)")
    if info.kind in ANSWER_KINDS and not experiment.spec.grid.generation:
        raise search_error(experiment, field, f"{name!r} scores answers, and the grid has no generation axis")
    base = name.removeprefix("chunk_")
    for prefix in AT_K:
        if base.startswith(prefix):
            k = int(base.removeprefix(prefix))
            short = [c for c in configs if k not in cutoffs_for(c.final_k)]
            if short:
                raise search_error(experiment, field, f"{name!r} is not measured for runs that keep fewer than {k} chunks "
                                                      f"({short[0].retrieval.label()}); race on a metric every run has (mrr, hit_at_1, ...)")
    return info


def _constraints(experiment: Experiment) -> None:
    for name, c in experiment.spec.search.constraints.items():
        try:
            make_constraint(name, c.max)
        except (MetricError, ValueError) as exc:
            raise search_error(experiment, f"search.constraints.{name}", str(exc)) from None


def resolve_search(experiment: Experiment, n_queries: int, configs: Sequence[RunConfig]) -> Search | None:
    """The race the experiment asks for, checked; None for ``strategy: grid``.

    Raises:
        ConfigError: one line naming the file, line and field.
    """
    spec = experiment.spec.search
    if not spec.is_race:
        return None
    name = default_metric(spec.model_dump(), bool(experiment.spec.grid.generation))
    info = _race_metric(experiment, "search.metric", name, configs)
    _constraints(experiment)
    n_retrieval = len({c.model_copy(update={"generation": None}) for c in configs})
    settings, p_settings = search_settings(spec.model_dump(), len(configs), n_retrieval, n_queries)
    if n_queries < spec.min_questions:
        raise search_error(experiment, "search.min_questions", f"the race needs at least {spec.min_questions} questions; the experiment "
                                                              f"samples {n_queries} (queries.limit)")
    need = min_questions_to_eliminate(settings) if len(configs) > 1 else 0
    if need is None or need > n_queries:
        raise search_error(experiment, "search", f"race without enough questions: with {len(configs)} configurations at alpha "
                                                 f"{spec.alpha} and margin {spec.margin}, even a configuration that loses every question "
                                                 f"is eliminated only after {need or 'too many'} questions, and the experiment samples "
                                                 f"{n_queries} (raise queries.limit, or race fewer configurations)")
    out = Search(name, info.lower_is_better, settings, spec.seed)
    prune = spec.prune_retrieval
    if prune is None:
        return out
    p_info = _race_metric(experiment, "search.prune_retrieval.metric", prune.metric, configs)
    if p_info.kind not in (Kind.RETRIEVAL, Kind.CHUNK_RETRIEVAL):
        raise search_error(experiment, "search.prune_retrieval.metric", f"{prune.metric!r} is not a retrieval metric")
    return Search(name, info.lower_is_better, settings, spec.seed, prune.metric, p_info.lower_is_better, p_settings)
