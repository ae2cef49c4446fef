"""Main effects of the grid's axes: what changing one choice does, all else equal.

The plain mean of the runs with a value (the old "quality per axis value") mixes unrelated runs:
BM25 runs carry embedding "(none)", and a value tried only with a strong retriever looks good for
the retriever's sake. A main effect compares like with like instead. For each axis and each of its
values after the first (the axis's first value in the experiment file is the reference):

1. **Cells**: pairs of runs equal on every other axis, one with the value and one with the first
   value, compared as stored config data. A run without an embedder (BM25) matches any embedder,
   so BM25 vs dense is compared once per dense embedder, and the embedding axis itself leaves BM25
   runs out (they use no embedder).
2. **Per question**, the metric is averaged over the cells (only cells where both runs scored the
   question), for the value and for the first value; the main effect is the mean over questions of
   the difference, so each question counts once.
3. **Interval and test**: :func:`~workbench.evaluation.stats.paired_difference` on those per-question
   averages: a percentile bootstrap over questions of the averaged paired difference, and a paired
   permutation test (McNemar when the averages are still 0/1, with a single cell). p-values are
   Holm-corrected across every effect in the table.
4. **Interaction**: the effect in each cell separately; ``interaction`` is flagged when it has
   different signs in different cells (the value helps in some settings and hurts in others), and
   ``crossover`` when two cells' own 95% intervals exclude 0 on opposite sides.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import pandas as pd

from .compare import ALPHA, metric_values
from .evaluation.stats import holm, paired_difference
from .store import AXES

OPTIONAL_STAGE = "embedding"  # None here means "this retriever uses no embedder", not a value of the axis
EFFECT_COLUMNS = ["axis", "value", "reference", "cells", "n", "diff", "ci_low", "ci_high", "p_value", "test", "p_holm", "significant",
                  "interaction", "crossover", "per_cell"]


def _key(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _matches(a: Mapping | None, b: Mapping | None, axis: str) -> bool:
    """Whether two run configs agree on every axis but ``axis`` (fields present in both compared;
    a missing embedder matches any)."""
    for other in AXES:
        if other == axis:
            continue
        x, y = (a or {}).get(other), (b or {}).get(other)
        if other == OPTIONAL_STAGE and (x is None or y is None):
            continue
        if not _same(x, y):
            return False
    return True


def _same(x, y) -> bool:
    if isinstance(x, Mapping) and isinstance(y, Mapping):
        return all(x[k] == y[k] for k in x.keys() & y.keys())  # a field only one of them has is not compared
    return x == y


def axis_levels(runs: pd.DataFrame, axis: str) -> list[tuple[str, str, list[str]]]:
    """The axis's values as (config key, label, run ids), in grid order (by the runs' ``position``)."""
    runs = runs.sort_values("position", kind="stable") if "position" in runs else runs
    levels: dict[str, tuple[str, list[str]]] = {}
    for _, r in runs.iterrows():
        value = (r["config"] or {}).get(axis)
        if value is None and axis == OPTIONAL_STAGE:
            continue
        label = str(r[axis]) if axis in r and pd.notna(r[axis]) else "-"
        levels.setdefault(_key(value), ("(none)" if label == "-" else label, []))[1].append(r["run_id"])
    return [(k, lab, ids) for k, (lab, ids) in levels.items()]


def _cells(runs: pd.DataFrame, axis: str, ref_ids: list[str], ids: list[str]) -> list[tuple[str, str]]:
    config = runs.set_index("run_id")["config"]
    return [(a, b) for b in ids for a in ref_ids if _matches(config[a], config[b], axis)]


def _cell_name(runs: pd.DataFrame, axis: str, a: str, b: str) -> str:
    """The other axes' values of a cell, where they vary between runs ("chunking sentence 128/16, retrieval dense@5")."""
    rows = runs.set_index("run_id")
    varying = [x for x in AXES if x != axis and x in runs and runs[x].astype(str).nunique() > 1]
    parts = []
    for x in varying:
        v = str(rows.at[b, x]) if str(rows.at[b, x]) != "-" or x != OPTIONAL_STAGE else str(rows.at[a, x])
        parts.append(f"{x} {'(none)' if v == '-' else v}")
    return ", ".join(parts) or "all else equal"


def _effect(runs: pd.DataFrame, values: Mapping[str, pd.DataFrame], metric: str, axis: str, cells: list[tuple[str, str]]) -> dict:
    per_cell, diffs = [], []
    for a, b in cells:
        va, vb = metric_values(values[a], metric), metric_values(values[b], metric)
        common = [q for q in va.index if q in vb.index]
        if not common:
            continue
        res = paired_difference([float(va[q]) for q in common], [float(vb[q]) for q in common])
        per_cell.append({"cell": _cell_name(runs, axis, a, b), "run_a": a, "run_b": b, "n": res.n, "diff": res.diff,
                         "ci_low": res.ci_low, "ci_high": res.ci_high})
        diffs.append(pd.DataFrame({"a": va[common], "b": vb[common]}))
    if not diffs:
        return {"cells": 0, "n": 0, "per_cell": []}
    averaged = pd.concat(diffs).groupby(level=0).mean()  # per question, over the cells that scored it
    res = paired_difference(averaged["a"].tolist(), averaged["b"].tolist())
    signs = {(d["diff"] > 0) - (d["diff"] < 0) for d in per_cell} - {0}
    return {"cells": len(per_cell), "n": res.n, "diff": res.diff, "ci_low": res.ci_low, "ci_high": res.ci_high, "p_value": res.p_value,
            "test": res.test, "interaction": len(signs) > 1, "per_cell": per_cell,
            "crossover": any(d["ci_low"] > 0 for d in per_cell) and any(d["ci_high"] < 0 for d in per_cell)}


def main_effects(runs: pd.DataFrame, values: Mapping[str, pd.DataFrame], metric: str, alpha: float = ALPHA) -> pd.DataFrame:
    """One row per (axis, value other than the axis's first): the main effect of ``metric`` against
    the first value (``diff`` = value - reference, in the metric's units) with its 95% interval,
    p-value, Holm-corrected p across the table, interaction flags and the effect in each cell.

    Args:
        runs: The experiment's runs: ``run_id``, ``config`` (stored run config), ``position`` (grid
            order) and one label column per axis (``Store.runs``).
        values: Per-question values by run id (``query_id`` and metric columns).
        metric: The metric to compare.
        alpha: Level for ``significant`` (``p_holm < alpha``).
    """
    rows = []
    for axis in AXES:
        levels = axis_levels(runs, axis)
        if len(levels) < 2:
            continue
        _, ref_label, ref_ids = levels[0]
        for _, lab, ids in levels[1:]:
            found = _effect(runs, values, metric, axis, _cells(runs, axis, ref_ids, ids))
            rows.append({"axis": axis, "value": lab, "reference": ref_label, **found})
    df = pd.DataFrame(rows, columns=EFFECT_COLUMNS)
    tested = df["p_value"].notna()
    df["p_holm"] = None
    if tested.any():
        df.loc[tested, "p_holm"] = holm(df.loc[tested, "p_value"].astype(float).tolist())
    df["significant"] = [bool(p is not None and pd.notna(p) and p < alpha) for p in df["p_holm"]]
    df["interaction"] = df["interaction"].fillna(False).astype(bool)
    df["crossover"] = df["crossover"].fillna(False).astype(bool)
    return df
