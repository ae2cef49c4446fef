"""Index builds split across a Ray cluster: one large chunk set embedded in ranges by several tasks.

With ``--executor ray`` each grid point runs as a Ray task. When that task must build a dense index
and the chunk set is large (or ``--embed-workers N`` asks for it), it cuts the chunk set into ranges
of whole 512-chunk blocks and submits one Ray task per range. A range task loads the embedding
model (with the run's thread count), embeds its blocks into the shared embedding cache
(``<cache>/stages``) and returns. The building task holds the index's build lock all along (its
heartbeat refreshed on a Chroma server) and adds each range's vectors, read back from the cache, to
the temporary collection in chunk-set order as the ranges finish; then it renames the collection.
Same lock, same temporary-collection rename, same batches and insertion order as a single builder:
the vectors and the HNSW graph -- hence every retrieval -- equal a single-worker build's (tested).

Why range tasks do not write to Chroma themselves: an HNSW graph depends on the order its vectors
were inserted, so concurrent writers would build a graph (and near-tie rankings) that differ from a
single-worker build's. Adding is cheap next to embedding (``index_add_s`` next to the range tasks'
time in bench/README.md), and it overlaps with the ranges still being embedded.

A range task that fails (an exception, a worker killed) is retried ``RANGE_RETRIES`` times; blocks
it finished before failing are cache hits on the retry. When a range fails for good the other
ranges are cancelled and the build fails with one line; the lock is released and the next build
resumes from what is cached.

Automatic split (``embed_workers`` unset): one range per ``AUTO_RANGE_CHUNKS`` chunks, at most as
many as the cluster has worker slots (CPUs / threads per task); a smaller chunk set is embedded by
the building task alone, since a range task pays for loading the model (seconds) and a chunk set
below 20,480 chunks takes minutes on one worker.

The nodes must share the cache folder (one machine, or a network filesystem): range tasks read the
chunk set file and write the embedding cache there.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence

import diskcache
import numpy as np

from ..config import EmbeddingSpec
from ..errors import WorkbenchError
from ..settings import Workspace, apply_offline_defaults
from ..stages.chunking import Chunk
from ..stages.embedding import CachedEmbedder, cached_passages, make_embedder
from ..stages.index import ADD_BATCH, embed_block_range
from .components import STAGE_CACHE_BYTES

AUTO_RANGE_CHUNKS = 10_240  # an automatic split gives each range task at least this many chunks (20 blocks)
RANGE_RETRIES = 2  # a failed range task runs again this many times


def auto_workers(n_chunks: int, slots: int) -> int:
    """Ranges for ``n_chunks`` when the user did not say: one per ``AUTO_RANGE_CHUNKS``, at most ``slots``."""
    return max(1, min(slots, n_chunks // AUTO_RANGE_CHUNKS))


def embed_range(chunks: Sequence[Chunk], spec: EmbeddingSpec, fingerprint: str, workspace: Workspace, start: int, stop: int) -> dict:
    """A Ray task: embed the blocks of ``chunks[start:stop]`` into the shared embedding cache."""
    apply_offline_defaults()
    t0, c0 = time.perf_counter(), time.process_time()
    with diskcache.Cache(str(workspace.stages_dir), size_limit=STAGE_CACHE_BYTES) as cache, \
            diskcache.Cache(str(workspace.memo_dir)) as memo:
        embedder = CachedEmbedder(make_embedder(spec, threads=workspace.local_threads, memo=memo), cache)
        if embedder.fingerprint != fingerprint:  # another model file on this node: its vectors would not be found
            raise WorkbenchError(f"embedding model {spec.label()} on {socket.gethostname()}: fingerprint {embedder.fingerprint[:12]}, "
                                 f"the run planned {fingerprint[:12]} (same model files on every node?)")
        computed = embed_block_range(chunks, embedder, start, stop)
    return {"start": start, "stop": stop, "computed": computed, "wall_s": round(time.perf_counter() - t0, 3),
            "cpu_s": round(time.process_time() - c0, 3), "host": socket.gethostname(), "pid": os.getpid()}


class RaySplit:
    """One index build's ranges, embedded by Ray tasks (a :class:`~workbench.stages.index.SplitEmbedding`)."""

    def __init__(self, spec: EmbeddingSpec, fingerprint: str, workers: int, workspace: Workspace, cache: diskcache.Cache,
                 log: Callable[[str], None]):
        self.spec, self.fingerprint, self.workers = spec, fingerprint, workers
        self.workspace, self.cache, self.log = workspace, cache, log
        self.where = f"{workers} Ray tasks"
        self.results: list[dict] = []

    def submit(self, chunks: Sequence[Chunk], ranges: list[tuple[int, int]]) -> list[Callable[[float], bool]]:
        import ray

        threads = self.workspace.local_threads
        task = ray.remote(num_cpus=threads, max_retries=RANGE_RETRIES, retry_exceptions=True)(embed_range)
        refs = [task.remote(chunks, self.spec, self.fingerprint, self.workspace, start, stop) for start, stop in ranges]
        self.log(f"    embedding {len(chunks)} chunks in {len(refs)} ranges on the cluster ({threads} thread(s) each)")
        return [self._waiter(ray, ref, refs) for ref in refs]

    def _waiter(self, ray, ref, refs: list) -> Callable[[float], bool]:
        def wait(timeout: float) -> bool:
            # ray.get, not ray.wait: a task blocked in ray.get gives its CPUs back to the cluster
            # meanwhile (documented), so the range tasks can run on the slot the builder holds.
            try:
                done = ray.get(ref, timeout=timeout)
            except ray.exceptions.GetTimeoutError:
                return False
            except Exception as exc:  # RayTaskError wraps the range task's exception
                for other in refs:
                    ray.cancel(other)
                cause = getattr(exc, "cause", None) or exc
                raise WorkbenchError(f"index build: a range failed after {RANGE_RETRIES} retries: {type(cause).__name__}: "
                                     f"{str(cause).splitlines()[0] if str(cause) else ''}") from None
            self.results.append(done)
            self.log(f"    range [{done['start']}, {done['stop']}): {done['computed']} embedded in {done['wall_s']:.0f}s "
                     f"({done['cpu_s']:.0f} CPU-s) on {done['host']}:{done['pid']}")
            return True

        return wait

    def vectors(self, texts: list[str]) -> np.ndarray | None:
        return cached_passages(self.cache, self.fingerprint, texts)


class RaySplitter:
    """The Ray executor's splitter (``Components(splitter=...)``): decides per index build whether
    and into how many ranges to split it; runs inside a grid point's Ray task."""

    def __init__(self, workspace: Workspace, log: Callable[[str], None] | None = None):
        self.workspace = workspace
        self.log = log or (lambda text: None)

    def slots(self) -> int:
        import ray

        return int(ray.cluster_resources().get("CPU", 0) // self.workspace.local_threads)

    def __call__(self, spec: EmbeddingSpec, fingerprint: str, n_chunks: int, cache: diskcache.Cache) -> RaySplit | None:
        workers = self.workspace.embed_workers or auto_workers(n_chunks, self.slots())
        workers = min(workers, -(-n_chunks // ADD_BATCH))  # ranges are whole blocks
        if workers <= 1:
            return None
        return RaySplit(spec, fingerprint, workers, self.workspace, cache, self.log)
