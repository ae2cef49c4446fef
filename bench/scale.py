"""How the workbench grows with the corpus: a retrieval-only grid over 10,000, 30,000 and 100,000 passages.

    nice -n 10 .venv/bin/python bench/scale.py            # full: 10k, 30k, 100k passages, 300 queries (52 min on 2 idle cores)
    .venv/bin/python bench/scale.py --quick               # smoke: 1k, 2k, 4k passages, 100 queries (< 10 min)
    .venv/bin/python bench/scale.py --sizes 2000,5000     # other sizes

For each size, ``workbench run`` (the real command: CLI, papermill, notebook kernel) runs one
chunking x {BM25, dense all-MiniLM-L6-v2} over a fresh store and cache, while this script samples
the whole process tree every 0.25 s (RSS, CPU, each process's RSS high-water mark) and the machine's
CPU (what other processes use). The kernel's stage meter (``workbench/stages/meter.py``) gives each
stage's wall-clock window, so every stage gets its wall time, CPU time, the tree's peak RSS and the
others' CPU share; store and cache sizes come from disk, query latency P50/P95 per retriever from
the stored rows. Each figure's growth exponent is the slope of log(figure) over log(passages).

Results: ``bench/results/<UTC start>-scale[-quick].json`` and a Markdown table on stdout (pasted
into bench/README.md). Working data: ``bench/work/scale/`` (git-ignored; a size's cache is deleted
after it is measured unless ``--keep``). See bench/README.md, "Large corpora".
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for `bench.*` and `workbench` when run as bench/scale.py

from bench import scalecorpus  # noqa: E402
from bench.run import machine_info, versions  # noqa: E402

WORK = ROOT / "bench" / "work" / "scale"
RESULTS = ROOT / "bench" / "results"
MODES = {"full": {"sizes": [10_000, 30_000, 100_000], "queries": 300},
         "quick": {"sizes": [1_000, 2_000, 4_000], "queries": 100}}
CHUNKING = "{splitter: sentence, chunk_size: 256, chunk_overlap: 32}"
TOP_K = 10
SAMPLE_S = 0.25
GIB = 2**30
TARGET_RSS_GIB = 4.0
TARGET_PER_PASSAGE_RATIO = 1.3
CONTENDED_SHARE = 0.10  # others used more than this share of the machine's CPU: flagged
TICK = os.sysconf("SC_CLK_TCK")
CORES = len(os.sched_getaffinity(0))


def log(msg: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


# -- sampling the process tree --------------------------------------------------------------------

def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all processes), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(fields[i] for i in (0, 1, 2, 5, 6, 7)) / TICK  # user nice system irq softirq steal


def _hwm_bytes(pid: int) -> int:
    """A process's RSS high-water mark (VmHWM): exact, unlike a sampled RSS."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _role(cmdline: list[str], root: bool) -> str:
    text = " ".join(cmdline)
    if root:
        return "workbench CLI (plan, papermill)"
    if "ipykernel" in text:
        return "notebook kernel (the run)"
    return (Path(cmdline[0]).name if cmdline else "?") + (" " + " ".join(cmdline[1:3]) if len(cmdline) > 1 else "")


class TreeSampler(threading.Thread):
    """Samples the process tree under ``pid``: (time, tree RSS, tree CPU, machine busy CPU, load)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, int, float, float, float]] = []
        self.procs: dict[int, dict] = {}
        self._stop_event = threading.Event()

    def sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        rss = 0
        for p in procs:
            try:
                with p.oneshot():
                    mem, cpu = p.memory_info().rss, p.cpu_times()
                    info = self.procs.setdefault(p.pid, {"role": _role(p.cmdline(), p.pid == self.pid), "hwm": 0, "cpu": 0.0})
            except psutil.Error:
                continue
            rss += mem
            info["cpu"] = cpu.user + cpu.system
            info["hwm"] = max(info["hwm"], _hwm_bytes(p.pid), mem)
        self.samples.append((time.time(), rss, sum(i["cpu"] for i in self.procs.values()), machine_busy_s(), os.getloadavg()[0]))

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(SAMPLE_S)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.sample()

    def window(self, start: float, end: float) -> dict:
        """Tree peak RSS, tree CPU, others' CPU share and load over [start, end]."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        before = [s for s in self.samples if s[0] <= start][-1:] or self.samples[:1]
        after = [s for s in self.samples if s[0] >= end][:1] or self.samples[-1:]
        edges = before + inside + after
        first, last = edges[0], edges[-1]
        span = max(last[0] - first[0], 1e-9)
        tree_cpu, busy = last[2] - first[2], last[3] - first[3]
        others = max(0.0, busy - tree_cpu)
        return {"peak_rss_mib": round(max(s[1] for s in edges) / 2**20, 1), "tree_cpu_s": round(tree_cpu, 2),
                "others_share": round(others / (span * CORES), 3), "loadavg": round(max(s[4] for s in edges), 2)}


# -- one size ---------------------------------------------------------------------------------------

def write_experiment(path: Path, dataset: Path, retrievers: list[str]) -> Path:
    methods = ", ".join(f"{{method: {m}, top_k: {TOP_K}}}" for m in retrievers)
    path.write_text(f"""name: scale
description: bench/scale.py -- retrieval only, one chunking, BM25 and dense MiniLM
dataset: {dataset}
grid:
  chunking: [{CHUNKING}]
  embedding: [{{provider: local, model: all-MiniLM-L6-v2}}]
  retrieval: [{methods}]
""", encoding="utf-8")
    return path


def run_workbench(experiment: Path, ws: Path, logfile: Path, extra: list[str]) -> dict:
    """``workbench run`` with its output timestamped line by line, its process tree sampled."""
    env = {**os.environ, "WORKBENCH_STORE": f"sqlite:///{ws / 'store.sqlite'}", "WORKBENCH_CACHE": str(ws / "cache"),
           "WORKBENCH_REPORTS": str(ws / "reports"), "COLUMNS": "400"}
    env = {k: v for k, v in env.items() if k not in ("WORKBENCH_CHROMA_URL", "WORKBENCH_EXECUTOR", "WORKBENCH_THREADS")}
    cmd = [sys.executable, "-m", "workbench", "run", str(experiment), "--no-report", *extra]
    lines: list[tuple[float, str]] = []
    t_launch = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    busy0 = machine_busy_s()
    try:
        with logfile.open("w", encoding="utf-8") as fh:
            for line in proc.stdout:
                lines.append((time.time(), line.rstrip("\n")))
                fh.write(f"{time.time() - t_launch:9.2f} {line}")
                fh.flush()
        rc = proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        raise
    finally:
        sampler.stop()
    t_exit = time.time()
    if rc != 0:
        raise SystemExit(f"workbench run failed (exit {rc}); see {logfile}:\n" + "\n".join(text for _, text in lines[-30:]))
    wall = t_exit - t_launch
    tree_cpu = sum(p["cpu"] for p in sampler.procs.values())
    others = max(0.0, machine_busy_s() - busy0 - tree_cpu)
    return {"t_launch": t_launch, "t_exit": t_exit, "lines": lines, "sampler": sampler, "wall_s": round(wall, 2),
            "cpu_s": round(tree_cpu, 2), "others_share": round(others / (wall * CORES), 3)}


def _exclusive(records: list[dict]) -> list[dict]:
    """Each stage record with the time of the stages nested inside it taken out (``*_excl``)."""
    out = []
    for r in records:
        inside = [c for c in records if c is not r and r["start"] <= c["start"] and c["end"] <= r["end"] + 1e-6]
        direct = [c for c in inside if not any(o is not c and o["start"] <= c["start"] and c["end"] <= o["end"] + 1e-6 for o in inside)]
        out.append({**r, "wall_excl": r["wall_s"] - sum(c["wall_s"] for c in direct),
                    "cpu_excl": r["cpu_s"] - sum(c["cpu_s"] for c in direct)})
    return out


def stage_rows(run: dict, records: list[dict], methods: dict[str, str], n: int) -> list[dict]:
    """One row per stage: wall, CPU, the tree's peak RSS and the others' CPU share in its window."""
    sampler: TreeSampler = run["sampler"]
    planned = next((t for t, text in run["lines"] if re.search(r"\d+ runs x \d+ questions", text)), run["t_launch"])
    records = _exclusive(sorted(records, key=lambda r: r["start"]))
    first = min((r["start"] for r in records), default=planned)
    last = max((r["end"] for r in records), default=run["t_exit"])
    windows = [("plan (CLI: load and hash the corpus)", run["t_launch"], planned, None),
               ("kernel start, plan reload", planned, first, None)]
    for r in records:
        name = {"questions": f"{methods.get(r['label'], '?')} queries (retrieve, score, store)", "bm25_index": "bm25 index",
                "embed_index": "dense embed + Chroma index", "chunking": "chunking",
                "model_load": f"load {r['label']}"}.get(r["stage"], r["stage"])
        windows.append((name, r["start"], r["end"], r))
    windows.append(("leaderboard, kernel shutdown", last, run["t_exit"], None))
    rows = []
    for name, start, end, rec in windows:
        w = sampler.window(start, end)
        wall = rec["wall_excl"] if rec else end - start
        cpu = rec["cpu_excl"] if rec else w["tree_cpu_s"]
        rows.append({"stage": name, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "wall_ms_per_passage": round(1000 * wall / n, 3),
                     "peak_rss_mib": w["peak_rss_mib"], "others_share": w["others_share"], "loadavg_max": w["loadavg"],
                     "kernel_maxrss_mib": rec["maxrss_mb"] if rec else None})
    return rows


def du_mib(path: Path) -> float:
    if path.is_file():
        return round(path.stat().st_size / 2**20, 2)
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 2) if path.exists() else 0.0


def store_figures(store_url: str) -> tuple[dict, dict[str, str]]:
    """Latency percentiles and quality per retriever, from the stored rows; run id -> method."""
    from workbench.store import Store

    st = Store(store_url)
    board = st.leaderboard("scale")
    chunks = st.runs("scale").set_index("run_id")["n_chunks"]
    out, methods = {}, {}
    for _, row in board.iterrows():
        method = row["retrieval"].split("@")[0]
        methods[row["run_id"]] = method
        lat = st.questions(row["run_id"])["retrieval_latency_s"].dropna().to_numpy()
        out[method] = {"run_id": row["run_id"], "status": row["status"], "n_chunks": int(chunks[row["run_id"]]),
                       "latency_p50_ms": round(1000 * float(np.percentile(lat, 50)), 3),
                       "latency_p95_ms": round(1000 * float(np.percentile(lat, 95)), 3),
                       "latency_max_ms": round(1000 * float(lat.max()), 3), "n_queries": int(len(lat)),
                       **{m: round(float(row[m]), 4) for m in ("hit_at_10", "mrr", "ndcg_at_10") if m in row}}
    st.engine.dispose()
    return out, methods


def kernel_summary(reports: Path) -> dict:
    import nbformat

    from workbench.notebooks import SUMMARY_MIME, recorded

    nb_path = next(reports.rglob("bakeoff.ipynb"))
    found = recorded(nbformat.read(nb_path, as_version=4), SUMMARY_MIME)
    return found[-1] if found else {}


def measure_size(n: int, n_queries: int, pool: Path, work: Path, extra: list[str], keep: bool, retrievers: list[str]) -> dict:
    folder = work / f"n{n}"
    shutil.rmtree(folder, ignore_errors=True)
    corpus = scalecorpus.write_corpus(folder / "dataset", pool, n, n_queries)
    exp = write_experiment(folder / "scale.yaml", folder / "dataset", retrievers)
    ws = folder / "ws"
    log(f"{n:,} passages ({corpus['words_total']:,} words), {corpus['n_queries']} queries: workbench run (load {os.getloadavg()[0]:.1f})")
    load_before = os.getloadavg()
    run = run_workbench(exp, ws, folder / "run.log", extra)
    summary = kernel_summary(ws / "reports")
    shared = next((s for s in summary.get("runs", []) if s.get("run_id") == "(shared)"), {})
    retrievers, methods = store_figures(f"sqlite:///{ws / 'store.sqlite'}")
    stages = stage_rows(run, shared.get("stages", []), methods, n)
    cache = ws / "cache"
    disk = {"chunk_set_mib": du_mib(cache / "chunksets"), "stage_cache_mib": du_mib(cache / "stages"),
            "chroma_mib": du_mib(cache / "chroma"), "memo_mib": du_mib(cache / "memo"),
            "store_mib": round(sum(du_mib(p) for p in ws.glob("store.sqlite*")), 2)}
    sampler: TreeSampler = run["sampler"]
    procs = sorted(({"role": p["role"], "peak_rss_mib": round(p["hwm"] / 2**20, 1), "cpu_s": round(p["cpu"], 1)}
                    for p in sampler.procs.values()), key=lambda p: -p["peak_rss_mib"])
    result = {
        "n_passages": n, "corpus": corpus, "n_chunks": next(iter(retrievers.values()))["n_chunks"],
        "run": {"wall_s": run["wall_s"], "cpu_s": run["cpu_s"], "wall_ms_per_passage": round(1000 * run["wall_s"] / n, 3),
                "cpu_ms_per_passage": round(1000 * run["cpu_s"] / n, 3),
                "peak_rss_mib_sampled": round(max(s[1] for s in sampler.samples) / 2**20, 1),
                "peak_rss_mib_bound": round(sum(p["hwm"] for p in sampler.procs.values()) / 2**20, 1),
                "others_share": run["others_share"], "contended": run["others_share"] > CONTENDED_SHARE,
                "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                "processes": procs[:8]},
        "stages": stages, "kernel_timings": {k: round(v, 3) for k, v in shared.items() if isinstance(v, float)},
        "disk": disk, "retrievers": retrievers, "log": str((folder / "run.log").relative_to(ROOT)),
    }
    log(f"  {run['wall_s']:.0f}s wall, {run['cpu_s']:.0f} CPU-s, peak RSS {result['run']['peak_rss_mib_sampled']:.0f} MiB "
        f"(bound {result['run']['peak_rss_mib_bound']:.0f}), others used {run['others_share']:.0%} of the CPU; "
        + ", ".join(f"{m} P95 {r['latency_p95_ms']:.1f} ms" for m, r in retrievers.items()))
    if not keep:
        shutil.rmtree(cache, ignore_errors=True)
    return result


# -- growth and targets -----------------------------------------------------------------------------

def exponent(sizes: list[int], values: list[float]) -> float | None:
    """Slope of log(value) over log(size): 1 linear, < 1 sublinear (least squares over the sizes)."""
    pairs = [(s, v) for s, v in zip(sizes, values) if v and v > 0]
    if len(pairs) < 2:
        return None
    slope = np.polyfit(np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs]), 1)[0]
    return round(float(slope), 3)


def figures(size: dict) -> dict[str, float]:
    """The figures whose growth is reported, flat: name -> value."""
    out = {"run wall s": size["run"]["wall_s"], "run CPU s": size["run"]["cpu_s"],
           "peak RSS MiB (sampled tree)": size["run"]["peak_rss_mib_sampled"],
           "peak RSS MiB (sum of process peaks)": size["run"]["peak_rss_mib_bound"]}
    for row in size["stages"]:
        out[f"{row['stage']}: wall s"] = row["wall_s"]
        out[f"{row['stage']}: CPU s"] = row["cpu_s"]
        out[f"{row['stage']}: peak RSS MiB"] = row["peak_rss_mib"]
    for k, v in size["disk"].items():
        out[f"disk {k}"] = v
    for m, r in size["retrievers"].items():
        out[f"{m} latency P50 ms"] = r["latency_p50_ms"]
        out[f"{m} latency P95 ms"] = r["latency_p95_ms"]
    return out


def growth(sizes: list[dict]) -> dict[str, dict]:
    flat = [figures(s) for s in sizes]
    ns = [s["n_passages"] for s in sizes]
    names = [k for k in flat[-1] if all(k in f for f in flat)]
    return {k: {"values": [f[k] for f in flat], "exponent": exponent(ns, [f[k] for f in flat])} for k in names}


def targets(sizes: list[dict]) -> dict:
    small, big = sizes[0], sizes[-1]
    rss = big["run"]["peak_rss_mib_bound"] / 1024
    wall_ratio = big["run"]["wall_ms_per_passage"] / small["run"]["wall_ms_per_passage"]
    cpu_ratio = big["run"]["cpu_ms_per_passage"] / small["run"]["cpu_ms_per_passage"]
    ns = [s["n_passages"] for s in sizes]
    out = {"peak_rss_gib_at_largest": {"value": round(rss, 3), "target": f"<= {TARGET_RSS_GIB}", "met": rss <= TARGET_RSS_GIB,
                                       "what": "sum of every process's RSS high-water mark (an upper bound of the tree's peak)"},
           "time_per_passage_ratio": {"value": round(wall_ratio, 3), "cpu_value": round(cpu_ratio, 3),
                                      "target": f"<= {TARGET_PER_PASSAGE_RATIO}", "met": wall_ratio <= TARGET_PER_PASSAGE_RATIO,
                                      "cpu_met": cpu_ratio <= TARGET_PER_PASSAGE_RATIO,
                                      "what": f"whole-run time per passage at {big['n_passages']:,} / at {small['n_passages']:,} "
                                              "(wall; cpu_value: the process tree's CPU time)"}}
    for m in big["retrievers"]:
        e = exponent(ns, [s["retrievers"][m]["latency_p95_ms"] for s in sizes])
        out[f"{m}_latency_p95_exponent"] = {"value": e, "target": "< 1 (sublinear)", "met": e is not None and e < 1,
                                            "what": f"growth exponent of {m} query latency P95 over the sizes"}
    return out


# -- output -----------------------------------------------------------------------------------------

def markdown(results: dict) -> str:
    sizes = results["sizes"]
    head = "| figure | " + " | ".join(f"{s['n_passages']:,}" for s in sizes) + " | exponent |"
    lines = [head, "|---|" + "---:|" * (len(sizes) + 1)]
    for name, g in results["growth"].items():
        vals = " | ".join(f"{v:,.1f}" if isinstance(v, (int, float)) and abs(v) >= 10 else f"{v:.3g}" for v in g["values"])
        lines.append(f"| {name} | {vals} | {g['exponent'] if g['exponent'] is not None else '–'} |")
    lines.append("")
    lines.append("| target | value | bound | met |")
    lines.append("|---|---:|---|---|")
    for name, t in results["targets"].items():
        extra = f" (CPU {t['cpu_value']})" if "cpu_value" in t else ""
        lines.append(f"| {name} | {t['value']}{extra} | {t['target']} | {'yes' if t['met'] else '**no**'} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description="growth of a retrieval grid with the corpus (bench/README.md, 'Large corpora')")
    ap.add_argument("--quick", action="store_true", help="1,000 / 2,000 / 4,000 passages, 100 queries (< 10 min)")
    ap.add_argument("--sizes", help="comma-separated corpus sizes (passages), e.g. 2000,5000")
    ap.add_argument("--queries", type=int, help="queries per size (default 300; 100 with --quick)")
    ap.add_argument("--threads", type=int, help="passed to `workbench run --threads` (default: every core)")
    ap.add_argument("--retrievers", default="bm25,dense", help="retrieval methods of the grid (default: %(default)s)")
    ap.add_argument("--keep", action="store_true", help="keep each size's cache (Chroma, embeddings) in bench/work/scale/")
    args = ap.parse_args()
    mode = "quick" if args.quick else "full"
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else MODES[mode]["sizes"]
    n_queries = args.queries or MODES[mode]["queries"]
    extra = ["--threads", str(args.threads)] if args.threads else []
    started = dt.datetime.now(dt.timezone.utc)
    results: dict = {"mode": mode, "started_utc": started.isoformat(timespec="seconds"), "machine": machine_info(),
                     "versions": versions(), "niceness": os.nice(0), "cores": CORES,
                     "config": {"chunking": CHUNKING, "embedder": "all-MiniLM-L6-v2", "retrieval": args.retrievers.split(","), "top_k": TOP_K,
                                "queries": n_queries, "threads": args.threads or CORES, "sample_s": SAMPLE_S},
                     "loadavg_start": os.getloadavg()}
    work = WORK / mode
    xquad = {" ".join(json.loads(line)["text"].split()) for line in (scalecorpus.XQUAD / "corpus.jsonl").open(encoding="utf-8")}
    # One pool for every full-mode run (the 10,000-passage corpus is the same whichever sizes a run
    # asks for); --quick draws from a small pool of its own (help topics and stdlib only: fast to build).
    pool_size = max(max(sizes), MODES["quick" if args.quick else "full"]["sizes"][-1]) - len(xquad)
    pool = WORK / f"pool-{pool_size}.jsonl"
    log(f"paragraph pool of {pool_size:,} (built once, then reused): {pool.relative_to(ROOT)}")
    results["pool"] = scalecorpus.build_pool(pool, pool_size, xquad)
    results["sizes"] = []
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / (started.strftime("%Y%m%dT%H%M%SZ") + ("-scale-quick" if args.quick else "-scale") + ".json")
    for n in sorted(sizes):  # the JSON is rewritten after each size: an interrupted run keeps what it measured
        results["sizes"].append(measure_size(n, n_queries, pool, work, extra, args.keep, results["config"]["retrieval"]))
        results["growth"] = growth(results["sizes"])
        results["targets"] = targets(results["sizes"]) if len(results["sizes"]) > 1 else {}
        results["contended"] = any(s["run"]["contended"] for s in results["sizes"])
        results["finished_utc"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        results["loadavg_end"] = os.getloadavg()
        out.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    print(markdown(results))
    print(f"\nresults: {out.relative_to(ROOT)}" + ("  (contended: other processes used > 10% of the CPU; read the CPU columns)"
                                                   if results["contended"] else ""))
    return 0 if all(t["met"] for t in results["targets"].values()) else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
