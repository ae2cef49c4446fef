"""``workbench cassette export``: the cassette of an experiment, made from the recordings.

Where recordings live between a run and an export: every hosted call is recorded as it is made,
by the run's HTTP layer, into ``<cache>/recordings`` (``providers/recording.py``), keyed by
provider, model, endpoint and request content hash, whatever experiment made it. Which of them an
experiment needs cannot be read off the store: the stage caches answer many questions without a
call (the same prompt in two runs, an index another experiment built, a resumed run), and
embedding batches depend on what the embedding cache held. So the export *replays* the
experiment, as stored, offline: a throwaway store and cache folder (nothing cached, every hosted
call made), its hosted calls answered from the recordings, strictly. The requests answered are
exactly what an offline replay of the experiment asks for, and they are what the cassette holds.
An export that succeeds has thereby replayed once; one that meets a call that was never recorded
(made before recording existed, or into another cache folder) fails with one line naming it.

Local stages (chunking, local embedders, BM25) are recomputed in the throwaway folder; runs with
no hosted model at all are skipped (they make no hosted call).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..config import Experiment
from ..config.cassette import Cassette, write_cassette
from ..config.experiment import RunConfig, parse_experiment
from ..errors import WorkbenchError
from ..providers.apikeys import keys_optional
from ..providers.recording import HostedHttp, Recordings, misses_as_errors, now_stamp
from ..settings import Workspace, find_input, sqlite_url
from ..store import Store
from .components import Components
from .plan import plan_experiment
from .progress import LineProgress
from .runner import Runner

MISS_HINT = ("; it was not recorded (made before recording existed, or into another cache folder): run the experiment again "
             "with a fresh --cache-dir to record every call, then export")


@dataclass(frozen=True)
class ExportSummary:
    path: Path
    experiment: str
    n_runs: int
    n_entries: int
    by_role: dict[str, int]


def stored_experiment(store: Store, ref: str, root: Path | None = None) -> Experiment:
    """The experiment as it was last run (a narrowed grid or question limit included), by its name
    or by its file: the stored spec, with paths resolved against the file it came from."""
    name = ref
    if ref.endswith((".yaml", ".yml")):
        from ..config import load_experiment

        name = load_experiment(find_input(ref, "experiment file", root)).name
    row = store.experiment(name)
    return parse_experiment(json.dumps(row["spec"]), Path(row["path"]))


def hosted(cfg: RunConfig, experiment: Experiment) -> bool:
    """Whether a run calls a hosted model (and so has calls to replay)."""
    gen = cfg.generation
    judge = experiment.spec.judge
    return any([cfg.embedding is not None and cfg.embedding.provider != "local",
                gen is not None and (gen.provider != "local" or (gen.fallback is not None and gen.fallback.provider != "local")),
                gen is not None and judge is not None and judge.provider != "local",
                cfg.rerank is not None and cfg.rerank.method in ("hosted", "llm") and cfg.rerank.provider != "local"])


def export_cassette(ref: str, workspace: Workspace, out: Path, *, log=None) -> ExportSummary:
    """Write the cassette of the experiment ``ref`` (a stored name or its file) to ``out``.

    Raises:
        StoreError: the experiment is not stored.
        ReplayError: a call the experiment makes was never recorded (the message names it).
        WorkbenchError: its inputs changed since it ran (other run ids), or it has no hosted model.
    """
    store = Store(workspace.store_url)
    experiment = stored_experiment(store, ref, workspace.root)
    stored_ids = set(store.run_ids(experiment.name))
    # embedded Chroma in the throwaway folder: an index on a server would be reused, its passages never asked for
    experiment = experiment.model_copy(update={"spec": experiment.spec.model_copy(update={"index": None})})
    with tempfile.TemporaryDirectory(prefix="wb-cassette-") as tmp:
        scratch = workspace.replace(store_url=sqlite_url(Path(tmp) / "replay.sqlite"), cache_dir=Path(tmp) / "cache", chroma_url=None,
                                    executor="local", ray_address=None, replay=None)
        recordings = Recordings(workspace.recordings_dir)
        http = HostedHttp(lookup=recordings.get, source=f"recordings in {workspace.recordings_dir}", strict=True)
        with misses_as_errors(MISS_HINT):
            with keys_optional():  # every answer comes from the recordings: no key needed
                plan = plan_experiment(experiment, scratch)
            changed = [r.run_id for r in plan.runs if r.run_id not in stored_ids]
            if changed:
                raise WorkbenchError(f"experiment {experiment.name!r}: its inputs changed since it ran (run {changed[0]} is not stored); "
                                     "run it again, then export")
            runs = [r for r in plan.runs if hosted(r.config, experiment)]
            if not runs:
                raise WorkbenchError(f"experiment {experiment.name!r} calls no hosted model: there is nothing to record")
            with Components(plan, scratch, http=http, progress=LineProgress(log) if log else None) as components, \
                    Runner(plan, scratch, components=components) as runner:
                runner.run(runs)
        entries = [recordings.get(k) for k in sorted(http.used)]
        recordings.close()
    cassette = Cassette(experiment=experiment.name, created_at=now_stamp(), runs=[r.run_id for r in runs], entries=entries)
    write_cassette(cassette, out)
    by_role: dict[str, int] = {}
    for e in entries:
        by_role[e.role] = by_role.get(e.role, 0) + 1
    return ExportSummary(Path(out), experiment.name, len(runs), len(entries), by_role)
