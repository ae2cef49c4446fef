"""The LLM judge's own reliability: verdicts over repeats, their agreement, and agreement with people.

A judge that flips its verdict when asked again, or that disagrees with a person, makes its metric
noise. So each answer can be judged ``repeats`` times (distinct seeds, and the judge's temperature
as configured), and per question the verdicts give:

- ``judge_faithful``: the majority verdict of the readable ones (a tie goes to the earliest repeat);
  None when no verdict could be read -- unmeasured, never 0;
- ``judge_unparseable`` / ``judge_error``: the share of the question's judge calls whose answer held
  no yes/no verdict / that failed outright (counted, never dropped silently);
- ``judge_flip``: 1 when the readable verdicts disagree (needs two); ``judge_repeat_agreement``:
  the share of pairs of readable verdicts that agree.

Per run: ``judge_flip_rate`` (share of questions whose verdict changes between repeats, Wilson
interval) and, where a person labelled answers (``workbench questions review --run``),
``judge_human_accuracy`` (Wilson) and ``judge_human_kappa``: Cohen's kappa, agreement corrected for
chance, with its asymptotic 95% interval (statsmodels).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import binomtest
from statsmodels.stats.inter_rater import cohens_kappa

from .aggregate import clean_values


def majority(verdicts: Sequence[float]) -> float | None:
    """The verdict most repeats gave; a tie goes to the first verdict given."""
    if not verdicts:
        return None
    yes = sum(1 for v in verdicts if v == 1.0)
    no = len(verdicts) - yes
    return verdicts[0] if yes == no else float(yes > no)


def verdict_metrics(verdicts: Sequence[float | None], n_errors: int, hallucination: float | None) -> dict:
    """A question's judge metrics from the verdicts read (None: unreadable) and the failed calls."""
    calls = len(verdicts) + n_errors
    read = [v for v in verdicts if v is not None]
    verdict = majority(read)
    out = {"judge_faithful": verdict, "judge_unparseable": (len(verdicts) - len(read)) / calls if calls else None,
           "judge_error": n_errors / calls if calls else None,
           "judge_agrees": None if verdict is None or hallucination is None else float(verdict == 1.0 - hallucination)}
    if len(read) >= 2:
        yes, no = sum(1 for v in read if v == 1.0), sum(1 for v in read if v == 0.0)
        pairs = len(read) * (len(read) - 1) / 2
        out["judge_flip"] = float(yes > 0 and no > 0)
        out["judge_repeat_agreement"] = (yes * (yes - 1) / 2 + no * (no - 1) / 2) / pairs
    return out


def _wilson(metric: str, k: int, n: int) -> dict:
    ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
    return {"metric": metric, "value": k / n, "ci_low": float(ci.low), "ci_high": float(ci.high), "n": n}


def judge_aggregates(rows) -> list[dict]:
    """``judge_flip_rate``, and the judge against human labels: ``judge_human_accuracy`` and
    ``judge_human_kappa`` (over questions with both a readable verdict and a label)."""
    out = []
    if "judge_flip" in rows:
        flips = clean_values(rows["judge_flip"])
        if flips:
            out.append(_wilson("judge_flip_rate", int(round(sum(flips))), len(flips)))
    if "human_faithful" in rows and "judge_faithful" in rows:
        pairs = [(float(j), float(h)) for j, h in zip(rows["judge_faithful"], rows["human_faithful"]) if clean_values([j]) and clean_values([h])]
        if pairs:
            out.append(_wilson("judge_human_accuracy", sum(j == h for j, h in pairs), len(pairs)))
            kappa = human_kappa(pairs)
            if kappa is not None:
                out.append({"metric": "judge_human_kappa", **kappa, "n": len(pairs)})
    return out


def human_kappa(pairs: Sequence[tuple[float, float]]) -> dict | None:
    """Cohen's kappa of (judge, human) 0/1 verdicts with its 95% interval; None when chance
    agreement is total (both said the same single thing throughout: kappa is undefined)."""
    table = np.zeros((2, 2))
    for j, h in pairs:
        table[int(j), int(h)] += 1
    n = table.sum()
    expected = float((table.sum(0) * table.sum(1)).sum() / n**2)
    if expected >= 1.0:
        return None
    with np.errstate(invalid="ignore", divide="ignore"):  # its z-test divides by 0 when one rater never varied; unused here
        res = cohens_kappa(table, return_results=True)
    return {"value": float(res.kappa), "ci_low": float(res.kappa_low), "ci_high": float(res.kappa_upp)}
