"""Issue #7's "done means": one experiment file, unchanged, on a laptop and on team infrastructure.

    .venv/bin/python bench/team.py                                   # experiments/quickstart.yaml, --limit 10
    .venv/bin/python bench/team.py --experiment experiments/retrieval_xquad.yaml --limit 2
    .venv/bin/python bench/team.py --keep                            # keep the servers' folders (data, logs)

(a) laptop: SQLite + embedded Chroma + the local executor;
(b) team:   PostgreSQL + a Chroma server + a local 2-worker Ray cluster (all three throwaway servers
    on loopback, started with the helpers of tests/servers.py).

Both sides run ``workbench run EXP --no-report --limit N --threads 1`` with their own fresh store,
cache and report folders under ``bench/work/team/``; the infrastructure comes from options only
(``--store``, ``--cache-dir``, ``--chroma-url``, ``--executor ray --address``). Then every stored
row that does not depend on timing is compared. Prints and writes
``bench/results/<UTC start>-team.json`` with both wall times and the verdict; exit 1 when the
stored results differ, 2 on an error (a failed run, a server that did not start). See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for `tests.servers` and `workbench` when run as bench/team.py

ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
       "ANONYMIZED_TELEMETRY": "False", "ORT_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}
for _k, _v in ENV.items():
    os.environ.setdefault(_k, _v)
# Nothing from the caller's shell may choose infrastructure for either side (the Ray workers inherit
# this process's environment too): each side gets its settings from options only.
for _k in [k for k in os.environ if k.startswith("WORKBENCH_")]:
    del os.environ[_k]

WORK = ROOT / "bench" / "work" / "team"
RESULTS = ROOT / "bench" / "results"
THREADS = "1"  # torch rounds matrix products differently with another thread count; a Ray task uses 1

# Not compared: what depends on timing or on when/where something ran.
TIMING = re.compile(r"latency|ttft")  # question columns, metric keys and aggregate names
QUESTION_SKIP = {"retrieval_latency_s", "rerank_latency_s", "generation_latency_s", "ttft_s",
                 "code_version"}  # the code's version rather than a result, like LINEAGE_INFO
RUN_SKIP = {"timings", "started_at", "finished_at"}
EXPERIMENT_SKIP = {"updated_at"}
# The code's version rather than a result (other edits in the working tree between the two runs
# would change it); reported separately, not part of the verdict.
LINEAGE_INFO = ("packages", "code_hash", "git_commit")


def log(msg: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


# -- servers (tests/servers.py) -------------------------------------------------------------------

class _KeepFolders:
    """Stands in for ``shutil`` inside tests.servers with --keep: its teardowns then stop the servers
    but leave their folders (data, logs), which are listed at the end."""

    def __init__(self) -> None:
        self.kept: list[str] = []

    def __getattr__(self, name):
        return getattr(shutil, name)

    def rmtree(self, path, *args, **kwargs) -> None:
        self.kept.append(str(path))


def start_servers(stack: contextlib.ExitStack) -> dict:
    """PostgreSQL (a fresh database), a Chroma server and a 2-CPU Ray head node, each stopped when
    ``stack`` closes (in reverse order), also after an error or Ctrl-C."""
    import pytest

    from tests import servers

    def fixture(fn, what: str):
        gen = fn.__wrapped__()  # the fixture's generator: setup up to its yield, teardown after
        try:
            value = next(gen)
        except pytest.skip.Exception as exc:  # the fixture "skips" when the server cannot start
            raise RuntimeError(f"{what} did not start: {exc.msg if hasattr(exc, 'msg') else exc}") from None
        stack.callback(lambda: (log(f"stopping {what}"), next(gen, None)))
        return value

    out = {}
    t0 = time.perf_counter()
    pg = servers.PostgresServer()
    stack.callback(lambda: (log("stopping PostgreSQL"), pg.stop()))
    out["store"] = pg.new_database()
    out["postgres_s"] = round(time.perf_counter() - t0, 1)
    log(f"PostgreSQL ({pg.bindir}) at 127.0.0.1:{pg.port} ({out['postgres_s']}s), folder {pg.root}")
    t0 = time.perf_counter()
    out["chroma_url"] = fixture(servers.chroma_server, "the Chroma server")
    out["chroma_s"] = round(time.perf_counter() - t0, 1)
    log(f"Chroma server at {out['chroma_url']} ({out['chroma_s']}s)")
    t0 = time.perf_counter()
    out["ray_address"] = fixture(servers.ray_cluster, "the Ray cluster")
    out["ray_s"] = round(time.perf_counter() - t0, 1)
    log(f"Ray cluster (2 CPUs) at {out['ray_address']} ({out['ray_s']}s)")
    return out


# -- the two sides --------------------------------------------------------------------------------

def workbench_run(label: str, args: list[str], folder: Path) -> dict:
    """``python -m workbench run ...`` as its own process group (killed as a whole on Ctrl-C), output
    to ``folder/run.log``; returns the wall time and the command line."""
    env = {**os.environ, "WORKBENCH_REPORTS": str(folder / "reports")}  # --no-report still writes the executed notebook
    cmd = [sys.executable, "-m", "workbench", "run", *args]
    shown = " ".join(["workbench", "run", *args])
    log(f"{label}: {shown}")
    logfile = folder / "run.log"
    t0 = time.perf_counter()
    with logfile.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            rc = proc.wait()
        except BaseException:
            _kill_group(proc)
            raise
    wall = time.perf_counter() - t0
    tail = logfile.read_text(errors="replace")
    if rc != 0:
        raise RuntimeError(f"{label} run failed (exit {rc}); log {logfile.relative_to(ROOT)}:\n{tail[-3000:]}")
    log(f"{label}: done in {wall:.1f}s")
    done = [line.strip() for line in tail.splitlines() if "done in" in line]
    return {"command": shown, "wall_s": round(wall, 2), "log": str(logfile.relative_to(ROOT)), "done_lines": done[-12:]}


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGINT, 10), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# -- what was stored ------------------------------------------------------------------------------

def snapshot(url: str) -> tuple[dict, dict]:
    """Every stored value that does not depend on timing, flattened to {path: value}; and the
    lineage's code-version fields per run (informational)."""
    from sqlalchemy import select

    from workbench.store import Store, aggregates, experiment_runs, experiments, questions, runs

    st = Store(url)
    flat: dict[tuple, object] = {}
    info: dict[str, dict] = {}
    with st.engine.connect() as conn:
        for row in conn.execute(select(experiments)).mappings():
            for k, v in row.items():
                if k not in EXPERIMENT_SKIP:
                    flat[("experiment", row["name"], k)] = v
        for row in conn.execute(select(experiment_runs)).mappings():
            flat[("experiment_run", row["experiment"], row["run_id"], "position")] = row["position"]
        for row in conn.execute(select(runs)).mappings():
            rid = row["run_id"]
            for k, v in row.items():
                if k == "lineage":
                    info[rid] = {f: v.get(f) for f in LINEAGE_INFO}
                    v = {f: x for f, x in v.items() if f not in LINEAGE_INFO}
                if k not in RUN_SKIP:
                    flat[("run", rid, k)] = v
        for row in conn.execute(select(questions)).mappings():
            key = ("question", row["run_id"], row["query_id"])
            for k, v in row.items():
                if k in QUESTION_SKIP:
                    continue
                if k == "metrics":
                    v = {m: x for m, x in (v or {}).items() if not TIMING.search(m)}
                flat[(*key, k)] = v
        for row in conn.execute(select(aggregates)).mappings():
            if TIMING.search(row["metric"]):
                continue
            for k in ("value", "ci_low", "ci_high", "n"):
                flat[("aggregate", row["run_id"], row["metric"], k)] = row[k]
    st.engine.dispose()
    return flat, info


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # NaN == NaN for this purpose
    return a == b


def compare(a: dict, b: dict) -> list[dict]:
    diffs = []
    for key in sorted(set(a) | set(b), key=lambda k: tuple(map(str, k))):
        va, vb = a.get(key, "<missing>"), b.get(key, "<missing>")
        if not _same(va, vb):
            diffs.append({"where": "/".join(map(str, key)), "laptop": va, "team": vb})
    return diffs


def _short(v, n: int = 160) -> str:
    s = json.dumps(v, default=str, ensure_ascii=False)
    return s if len(s) <= n else s[:n] + "…"


def git_commit() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        p = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        if p.returncode == 0:
            return p.stdout.strip()
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description="the same experiment on laptop and team infrastructure; compares stored results (bench/README.md)")
    ap.add_argument("--experiment", default="experiments/quickstart.yaml", help="experiment file, used unchanged (default: %(default)s)")
    ap.add_argument("--limit", type=int, default=10, help="passed to `workbench run --limit` (default: %(default)s)")
    ap.add_argument("--keep", action="store_true", help="keep the servers' folders (data and logs) after stopping them")
    args = ap.parse_args()

    started = dt.datetime.now(dt.timezone.utc)
    exp = Path(args.experiment)
    exp_arg = str(exp.resolve().relative_to(ROOT)) if exp.resolve().is_relative_to(ROOT) else str(exp.resolve())
    if not (ROOT / exp_arg).is_file():
        print(f"error: no experiment file {args.experiment}", file=sys.stderr)
        return 2
    bindir = Path(sys.executable).parent
    missing = [str(bindir / x) for x in ("chroma", "ray") if not (bindir / x).exists()]
    if missing:
        print(f"error: missing {', '.join(missing)} (pip install 'workbench[ray]' and chromadb)", file=sys.stderr)
        return 2

    laptop_dir, team_dir = WORK / "laptop", WORK / "team"
    for d in (laptop_dir, team_dir):  # fresh: both sides compute everything from scratch
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    common = [exp_arg, "--no-report", "--limit", str(args.limit), "--threads", THREADS]
    laptop_store = f"sqlite:///{laptop_dir / 'wb.sqlite'}"

    from tests import servers

    keeper = _KeepFolders() if args.keep else None
    if keeper:
        servers.shutil = keeper

    result: dict = {"started": started.isoformat(timespec="seconds"), "experiment": exp_arg, "limit": args.limit,
                    "threads": int(THREADS), "git_commit": git_commit(), "python": platform.python_version(),
                    "cores": len(os.sched_getaffinity(0)), "cpu": platform.processor() or platform.machine()}
    code = 2
    try:
        # (a) the laptop, before any server runs (so their idle load does not slow it down)
        result["laptop"] = {"infrastructure": "SQLite + embedded Chroma + local executor", "loadavg_before": os.getloadavg()[0],
                            **workbench_run("laptop", [*common, "--store", laptop_store, "--cache-dir", str(laptop_dir / "cache")], laptop_dir)}
        with contextlib.ExitStack() as stack:
            srv = start_servers(stack)
            result["servers_start_s"] = {k: srv[k] for k in ("postgres_s", "chroma_s", "ray_s")}
            # (b) the team: the same file, infrastructure from options only
            result["team"] = {"infrastructure": "PostgreSQL + Chroma server + Ray (2 workers)", "loadavg_before": os.getloadavg()[0],
                              **workbench_run("team", [*common, "--store", srv["store"], "--cache-dir", str(team_dir / "cache"),
                                                       "--chroma-url", srv["chroma_url"], "--executor", "ray",
                                                       "--address", srv["ray_address"]], team_dir)}
            # side (b) really used the servers: the CLI names them, and no embedded Chroma in its cache
            team_log = (team_dir / "run.log").read_text(errors="replace")
            result["team"]["used_servers"] = {
                "ray": "ray: " in team_log and f"on {srv['ray_address']}" in team_log,
                "chroma_server": f"Chroma server {srv['chroma_url']}" in team_log and not (team_dir / "cache" / "chroma").exists(),
                "postgresql": srv["store"].startswith("postgresql")}
            a, info_a = snapshot(laptop_store)
            b, info_b = snapshot(srv["store"])
        diffs = compare(a, b)
        n_runs = len({k[1] for k in a if k[0] == "run"})
        n_q = len({k[:3] for k in a if k[0] == "question"})
        n_agg = len({k[:3] for k in a if k[0] == "aggregate"})
        statuses = {k[1]: v for k, v in a.items() if k[0] == "run" and k[2] == "status"}
        result["compared"] = {"values": len(a), "runs": n_runs, "questions": n_q, "aggregates": n_agg,
                              "run_statuses": statuses,
                              "excluded": {"questions": sorted(QUESTION_SKIP) + ["metrics keys matching latency|ttft"],
                                           "aggregates": "metrics matching latency|ttft", "runs": sorted(RUN_SKIP),
                                           "experiments": sorted(EXPERIMENT_SKIP),
                                           "lineage (code version, reported below)": list(LINEAGE_INFO)}}
        result["lineage_code_version_equal"] = info_a == info_b
        result["identical"] = not diffs and n_runs > 0
        result["differences"] = diffs[:200]
        result["n_differences"] = len(diffs)
        code = 0 if result["identical"] else 1
    except KeyboardInterrupt:
        log("interrupted: servers stopped")
        result["error"] = "interrupted"
        code = 130
    except Exception as exc:  # noqa: BLE001 - one line, then the JSON records it
        result["error"] = f"{type(exc).__name__}: {exc}"
        print(f"error: {result['error']}", file=sys.stderr)
    finally:
        if keeper:
            result["kept_server_folders"] = keeper.kept
            for path in keeper.kept:
                log(f"kept {path}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / (started.strftime("%Y%m%dT%H%M%SZ") + "-team.json")
    out.write_text(json.dumps(result, indent=2, default=str, ensure_ascii=False) + "\n", encoding="utf-8")

    print()
    print(f"experiment {exp_arg} --limit {args.limit} --threads {THREADS}")
    for side in ("laptop", "team"):
        if side in result:
            print(f"  {side:6} {result[side]['wall_s']:8.1f}s  {result[side]['infrastructure']}")
    if "servers_start_s" in result:
        s = result["servers_start_s"]
        print(f"  (servers started in: PostgreSQL {s['postgres_s']}s, Chroma {s['chroma_s']}s, Ray {s['ray_s']}s; not in the team time)")
    if "identical" in result:
        c = result["compared"]
        statuses = ", ".join(sorted(set(c["run_statuses"].values())))
        what = f"{c['runs']} runs ({statuses}), {c['questions']} question rows, {c['aggregates']} aggregates, {c['values']} values"
        if result["identical"]:
            print(f"VERDICT: IDENTICAL stored results: {what}; timing fields excluded")
        else:
            print(f"VERDICT: DIFFERENT: {result['n_differences']} of {what} differ:")
            for d in result["differences"][:40]:
                print(f"  {d['where']}: laptop {_short(d['laptop'])} | team {_short(d['team'])}")
        if not all(result["team"]["used_servers"].values()):
            print(f"  warning: side (b) did not use every server: {result['team']['used_servers']} (see {result['team']['log']})")
        if not result["lineage_code_version_equal"]:
            print("  note: the lineage's code version (packages, code hash, git commit) differs between the sides (not compared)")
    else:
        print(f"VERDICT: no comparison ({result.get('error', 'error')})")
    print(f"results: {out.relative_to(ROOT)}")
    return code


if __name__ == "__main__":
    # SIGTERM behaves like Ctrl-C: the servers are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    sys.exit(main())
