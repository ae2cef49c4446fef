"""Stage meter: the wall time, CPU time and memory high-water mark of each stage a run goes through.

On a shared machine wall time alone says little (another process's load slows torch's threads
many-fold), so each stage also records the CPU seconds this process spent in it: all its threads,
torch's and Chroma's included. The process's RSS high-water mark at the end of each stage shows
which stage raised it. Start and end are wall-clock (epoch) times, so a benchmark that samples a
whole process tree from outside (``bench/scale.py``) can attribute its samples to stages.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class StageRecord:
    stage: str  # chunking, model_load, embed_index, bm25_index, questions, ...
    label: str  # what it worked on: a run id, a chunk set, an index name
    start: float  # epoch seconds
    end: float
    wall_s: float
    cpu_s: float  # this process's CPU seconds (every thread) during the stage
    maxrss_mb: float  # this process's RSS high-water mark when the stage ended


def maxrss_mb() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


class StageMeter:
    """Collects a :class:`StageRecord` per measured stage; stages may nest (a BM25 index built
    during a run's questions is inside that run's ``questions`` stage)."""

    def __init__(self) -> None:
        self.records: list[StageRecord] = []

    @contextlib.contextmanager
    def measure(self, stage: str, label: str = ""):
        start, t0, c0 = time.time(), time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            self.records.append(StageRecord(stage, label, start, start + wall, round(wall, 4), round(cpu, 4), round(maxrss_mb(), 1)))

    def totals(self) -> dict[str, float]:
        """``{stage}_s`` and ``{stage}_cpu_s`` summed over the records of each stage."""
        out: dict[str, float] = {}
        for r in self.records:
            out[f"{r.stage}_s"] = out.get(f"{r.stage}_s", 0.0) + r.wall_s
            out[f"{r.stage}_cpu_s"] = out.get(f"{r.stage}_cpu_s", 0.0) + r.cpu_s
        return out

    def to_list(self) -> list[dict]:
        return [asdict(r) for r in self.records]
