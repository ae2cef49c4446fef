"""Do two results stores hold the same results? The comparison `bench/team.py` makes, for any two
stores: every stored value that does not depend on timing (latencies, TTFT, start/finish times)
or on the code's version (lineage code hash and git commit, each row's code version).

    .venv/bin/python bench/same_results.py sqlite:///before.sqlite sqlite:///after.sqlite [--json bench/results/X.json]

Used for issue 13's "done means": `make quickstart` stores the same rows before and after the
run-core redesign. Exit 0 when identical, 1 when not (the first differences are printed).
Open copies: opening a store migrates it to the newest schema.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.team import _short, compare, snapshot  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="store URL (e.g. sqlite:///path/to/a.sqlite)")
    ap.add_argument("b", help="store URL")
    ap.add_argument("--json", type=Path, help="write the verdict and the differences here")
    args = ap.parse_args()
    (a, info_a), (b, info_b) = snapshot(args.a), snapshot(args.b)
    diffs = compare(a, b)
    n_questions = len({k[:3] for k in a if k[0] == "question"})
    n_aggregates = len({k[:3] for k in a if k[0] == "aggregate"})
    verdict = {"a": args.a, "b": args.b, "identical": not diffs, "values_compared": len(a), "question_rows": n_questions,
               "aggregates": n_aggregates, "differences": len(diffs), "first_differences": diffs[:20],
               "code_versions": {"a": info_a, "b": info_b}}
    print(f"{'identical' if not diffs else 'DIFFERENT'}: {len(a)} values ({n_questions} question rows, {n_aggregates} aggregates) "
          f"compared, {len(diffs)} differ")
    for d in diffs[:20]:
        print(f"  {d['where']}: {_short(d['laptop'])} != {_short(d['team'])}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(verdict, indent=2, default=str), encoding="utf-8")
    return 0 if not diffs else 1


if __name__ == "__main__":
    raise SystemExit(main())
